# kinfer - a message-queue worker pool for ML inference.
#
#   make            build everything into build/
#   make run        install what is missing, start a private stack, run a demo
#   make test       install what is missing, build with -Werror, run all tests
#   make asan       build and test with AddressSanitizer + UBSan (build-asan/)
#   make deps       apt-get install the Debian packages kinfer needs
#
# Objects are listed explicitly: common/ is linked into every program.

CC       ?= cc
BUILD    ?= build
OPT      ?= -O2
CFLAGS   ?=
PKGS      = rdkafka msgpack hiredis openblas jansson libcrypto libmicrohttpd libsodium
WARN      = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wno-missing-field-initializers
KF_CFLAGS = -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) -MMD -MP -Icommon \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
KF_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm $(LDLIBS)
SAN       =

COMMON_OBJS = common/kf_log.o common/kf_error.o common/kf_util.o common/kf_config.o \
              common/mp_bound.o common/mp_field.o common/mp_pack.o common/job_codec.o common/model.o common/model_file.o common/model_math.o \
              common/model_ensemble.o common/model_registry_read.o \
              common/model_registry_admin.o \
              common/kf_redis.o common/kf_kafka.o common/kf_keys.o common/kf_stats.o \
              common/kf_quota.o common/kf_result.o common/kf_redact.o \
              common/kf_sign.o \
              common/kf_log_limit.o
WORKER_OBJS = worker/main.o worker/worker.o worker/batch.o worker/commit.o worker/dlq.o \
              worker/model_store.o worker/queue.o worker/offsets.o worker/metrics.o worker/http.o \
              worker/endpoint.o worker/pipeline.o worker/loop.o worker/lag.o \
              worker/redis_conn.o worker/quota.o worker/step_args.o worker/options.o \
              worker/results_topic.o \
              worker/results_size.o \
              worker/chain.o \
              worker/advertise.o \
              worker/auth.o \
              $(MODEL_STORE_OBJS)
MODEL_STORE_OBJS = worker/model_store_dir.o worker/model_store_registry.o \
              worker/model_store_registry_conn.o worker/model_store_registry_cache.o \
              worker/model_store_registry_build.o worker/model_store_registry_lookup.o \
              worker/model_store_registry_reloader.o
KINFER_OBJS = producer-tool/main.o producer-tool/cli.o producer-tool/cmd_submit.o producer-tool/cmd_result.o \
              producer-tool/cmd_tail.o \
              producer-tool/cmd_model.o producer-tool/input.o producer-tool/result_json.o \
              producer-tool/cmd_registry.o \
              producer-tool/cmd_quota.o \
              producer-tool/cmd_key.o producer-tool/signer.o \
              producer-tool/cmd_bench.o producer-tool/bench_cpu.o producer-tool/bench_compute.o \
              producer-tool/bench_probe.o \
              producer-tool/bench_run.o \
              producer-tool/bench_jobs.o \
              producer-tool/bench_collect.o \
              producer-tool/bench_memory.o \
              producer-tool/bench_report.o \
              producer-tool/cmd_top.o producer-tool/top_pool.o producer-tool/top_view.o \
              producer-tool/prom_text.o
DEVBROKER_OBJS = deploy/devbroker/devbroker.o
HARNESS_OBJS   = tests/harness/stack.o tests/harness/kt_job.o tests/harness/kt_proxy.o \
                 tests/harness/kt_kafka.o \
                 tests/harness/kt_metrics.o

UNIT_TESTS        = $(patsubst %.c,%,$(wildcard tests/unit/test_*.c))
INTEGRATION_TESTS = $(patsubst %.c,%,$(wildcard tests/integration/test_*.c))
FAULT_TESTS       = $(patsubst %.c,%,$(wildcard tests/faults/test_*.c))
REALKAFKA_TESTS   = $(patsubst %.c,%,$(wildcard tests/realkafka/test_*.c))

BINS = $(BUILD)/kinfer-worker $(BUILD)/kinfer $(BUILD)/kinfer-devbroker $(BUILD)/kinfer-convert
B    = $(BUILD)/obj

all: $(BINS)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(KF_CFLAGS) $(SAN) -c $< -o $@

# Lua scripts are compiled in as C string literals, one line at a time:
# worker/step.lua, and the model registry's change scripts
# common/registry_*.lua (model_registry_admin.c puts the prelude in front of
# each).
LUA_TO_C = sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/'

$(B)/gen/step_lua.h: worker/step.lua
	@mkdir -p $(dir $@)
	$(LUA_TO_C) $< > $@

$(B)/worker/commit.o: $(B)/gen/step_lua.h
$(B)/worker/commit.o: KF_CFLAGS += -I$(B)/gen

REGISTRY_LUA = $(addprefix $(B)/gen/registry_,$(addsuffix _lua.h,prelude push activate rollback rm))

$(B)/gen/registry_%_lua.h: common/registry_%.lua
	@mkdir -p $(dir $@)
	$(LUA_TO_C) $< > $@

$(B)/common/model_registry_admin.o: $(REGISTRY_LUA)
$(B)/common/model_registry_admin.o: KF_CFLAGS += -I$(B)/gen

$(BUILD)/libkinfer.a: $(addprefix $(B)/,$(COMMON_OBJS))
	ar rcs $@ $^

$(BUILD)/kinfer-worker: $(addprefix $(B)/,$(WORKER_OBJS)) $(BUILD)/libkinfer.a
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS)

# `kinfer top` alone reads the workers over HTTP (libcurl) and draws with
# ncurses: only the CLI links them.
TOP_PKGS = libcurl ncursesw
$(B)/producer-tool/cmd_top.o $(B)/producer-tool/top_pool.o: \
    KF_CFLAGS += $(shell pkg-config --cflags $(TOP_PKGS) 2>/dev/null)

$(BUILD)/kinfer: $(addprefix $(B)/,$(KINFER_OBJS)) $(BUILD)/libkinfer.a
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) $(shell pkg-config --libs $(TOP_PKGS) 2>/dev/null)

$(BUILD)/kinfer-devbroker: $(addprefix $(B)/,$(DEVBROKER_OBJS)) $(BUILD)/libkinfer.a
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS)

# A Python script (fitted models and numpy weights to model files), next to
# the programs with the module it runs (kinfer_convert.py, importable).
$(BUILD)/kinfer-convert: producer-tool/kinfer-convert producer-tool/kinfer_convert.py
	@mkdir -p $(dir $@)
	cp producer-tool/kinfer_convert.py $(dir $@)kinfer_convert.py
	cp $< $@

$(BUILD)/tests/%: $(B)/tests/%.o $(addprefix $(B)/,$(HARNESS_OBJS)) $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# This one runs the worker's model store in-process: its objects go before
# the library so that the library members they call are linked.
$(BUILD)/tests/integration/test_model_store: $(B)/tests/integration/test_model_store.o \
                                             $(B)/worker/model_store.o \
                                             $(addprefix $(B)/,$(MODEL_STORE_OBJS)) \
                                             $(addprefix $(B)/,$(HARNESS_OBJS)) $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# This one tests the worker's metrics and HTTP endpoint in-process.
$(BUILD)/tests/unit/test_metrics: $(B)/tests/unit/test_metrics.o $(B)/worker/metrics.o \
                                  $(B)/worker/http.o $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# This one tests the CLI's input reader: producer-tool/input.o goes before
# the library so that the library members it calls are linked.
$(BUILD)/tests/unit/test_input: $(B)/tests/unit/test_input.o $(B)/producer-tool/input.o \
                                $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# This one tests the CLI's key file reader (producer-tool/signer.o) and the
# signature arithmetic of common/kf_sign.c.
$(BUILD)/tests/unit/test_sign: $(B)/tests/unit/test_sign.o $(B)/producer-tool/signer.o \
                               $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# Unit tests of the worker's own modules link the worker objects they test.
# test_offsets wraps (ld --wrap) the allocator, to make it fail on demand,
# and rd_kafka_offsets_store, to record what is stored without a broker: the
# tested object is the worker's own, with no test hook compiled in.
$(BUILD)/tests/unit/test_offsets: $(B)/tests/unit/test_offsets.o $(B)/worker/offsets.o \
                                  $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka \
	    -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup \
	    -Wl,--wrap=rd_kafka_offsets_store

# test_step_args wraps the two librdkafka calls a result value makes of its
# message, so a job's message can be a plain struct.
$(BUILD)/tests/unit/test_step_args: $(B)/tests/unit/test_step_args.o $(B)/worker/step_args.o \
                                    $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka \
	    -Wl,--wrap=rd_kafka_topic_name,--wrap=rd_kafka_message_timestamp

# test_batch wraps model_forward (records each stacked pass),
# rd_kafka_message_destroy (its messages are plain structs), realloc, and
# ms_store_get (the test gives jobs their models; no model store linked).
$(BUILD)/tests/unit/test_batch: $(B)/tests/unit/test_batch.o $(B)/worker/batch.o \
                                $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka \
	    -Wl,--wrap=model_forward,--wrap=rd_kafka_message_destroy,--wrap=realloc \
	    -Wl,--wrap=ms_store_get

# test_commit fakes the connection (it defines redis_conn.h's functions
# itself) and wraps kf_script_append and the librdkafka calls of a value.
$(BUILD)/tests/unit/test_commit: $(B)/tests/unit/test_commit.o $(B)/worker/commit.o \
                                 $(B)/worker/step_args.o $(B)/worker/metrics.o $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka -Wl,--wrap=kf_script_append \
	    -Wl,--wrap=rd_kafka_topic_name,--wrap=rd_kafka_message_timestamp

$(BUILD)/tests/unit/test_chain: $(B)/tests/unit/test_chain.o $(B)/worker/chain.o \
                                $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# test_prom_text: the exposition parser of `kinfer top`, on its own.
$(BUILD)/tests/unit/test_prom_text: $(B)/tests/unit/test_prom_text.o \
                                    $(B)/producer-tool/prom_text.o $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

$(BUILD)/tests/unit/test_config: $(B)/tests/unit/test_config.o $(B)/worker/options.o \
                                 $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

$(BUILD)/tests/unit/test_queue: $(B)/tests/unit/test_queue.o $(B)/worker/queue.o \
                                $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# Python clients and references use Debian's interpreter, which has the apt
# packages (numpy, msgpack, confluent-kafka, redis); the python3 first on PATH
# may be a different build without them.
PYTHON = /usr/bin/python3

.PHONY: all run test test-format format test-layout test-unit test-integration test-py asan deps \
        clean bench test-faults fuzz asan-faults test-realkafka kafka-jars
.PRECIOUS: $(B)/%.o

tests-build: $(BINS) $(addprefix $(BUILD)/,$(UNIT_TESTS) $(INTEGRATION_TESTS) $(FAULT_TESTS) \
                                 $(REALKAFKA_TESTS))

# Everything CI runs: the tests, the fault suite, the fuzzers (TEST_FUZZ_SECONDS
# each, to keep CI under 20 minutes; `make fuzz` alone runs FUZZ_SECONDS) and
# the unit and integration tests again under ASan/UBSan.
# Builds and fuzzers use every core (NPROC); the test suites run one at a
# time, since their timings assume the machine is theirs.
NPROC ?= $(shell nproc 2>/dev/null || echo 2)

test: deps
	$(MAKE) -j$(NPROC) tests-build
	$(MAKE) --no-print-directory test-format test-layout test-unit test-integration test-py \
	    test-faults test-realkafka
	$(MAKE) --no-print-directory -j$(NPROC) -O fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)
	$(MAKE) --no-print-directory asan

# The layout rules (tests/layout/check_layout.py): common/ stands alone, no
# call or include circles, no file over 700 lines that is not one concept.
test-layout: $(BINS)
	$(PYTHON) tests/layout/check_layout.py $(B)

test-unit: $(addprefix $(BUILD)/,$(UNIT_TESTS))
	@set -e; for t in $^; do echo "== $$t"; $$t; done

# The integration and fault programs spend most of their time waiting
# (servers starting, session timeouts, restarts, deadlines: the fault suite
# used 25 s of CPU in 340 s), so they run TEST_JOBS at a time, each one's
# output printed whole when it ends (make -O); each starts its own Redis
# and broker on free ports.  TEST_JOBS=1 runs them one by one.
TEST_JOBS ?= 2

test-integration: $(BINS) $(addprefix $(BUILD)/,$(INTEGRATION_TESTS))
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) -O \
	    $(addprefix run-integration-,$(notdir $(INTEGRATION_TESTS)))

# run-SUITE-PROGRAM: one program of tests/SUITE/ against the binaries in $(BUILD)
run-integration-%:
	@echo "== $(BUILD)/tests/integration/$*"; KINFER_BIN=$(BUILD) $(BUILD)/tests/integration/$*
run-faults-%:
	@echo "== $(BUILD)/tests/faults/$*"; KINFER_BIN=$(BUILD) $(BUILD)/tests/faults/$*

# tests/py/test_*.py with Debian's python3; test_client_lib.py pip-installs the
# Python client (producer-tool/python) into a venv, $(BUILD)/pyclient-venv.
test-py: $(BINS)
	@set -e; for t in tests/py/test_*.py; do [ -e "$$t" ] || continue; echo "== $$t"; \
	    KINFER_BIN=$(BUILD) $(PYTHON) $$t; done

# Fault tests (tests/faults/): the integration harness plus faults.c, their
# shared fixture (job streams, Redis checks, the DLQ reader).
FAULT_OBJS = tests/faults/faults.o

$(BUILD)/tests/faults/%: $(B)/tests/faults/%.o $(addprefix $(B)/,$(FAULT_OBJS) $(HARNESS_OBJS)) \
                         $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# The fault suite: TEST_JOBS programs at a time too (see test-integration),
# the longest first.
FAULT_FIRST = test_worker_faults test_dlq_faults
FAULT_RUNS  = $(addprefix run-faults-,$(filter $(FAULT_FIRST),$(notdir $(FAULT_TESTS))) \
                $(filter-out $(FAULT_FIRST),$(notdir $(FAULT_TESTS))))

test-faults: $(BINS) $(addprefix $(BUILD)/,$(FAULT_TESTS))
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) -O $(FAULT_RUNS)

# The genuine Apache Kafka broker of the real-Kafka tests and deploy/kafka-local:
# its jars, resolved by Maven from Maven Central (deploy/kafka/pom.xml) into
# $(KAFKA_DIR)/jars, once (again only when the pom changes).
KAFKA_DIR ?= $(BUILD)/kafka
# and a Kafka 3.9.1 for the SCRAM case of test_real_secure only (pom-3.9.xml
# says why: Debian's librdkafka cannot log into 4.x with SCRAM)
KAFKA39_DIR ?= $(BUILD)/kafka-3.9

kafka-jars:
	@bash deploy/kafka/fetch-jars.sh $(KAFKA_DIR)
	@bash deploy/kafka/fetch-jars.sh $(KAFKA39_DIR) deploy/kafka/pom-3.9.xml

# Tests on a genuine single-node Kafka (tests/realkafka/: the fault fixture
# on kt_stack_start_kafka): the CLI and workers end to end, workers killed
# and scaled, the broker killed and restarted, dead letters read back.
$(BUILD)/tests/realkafka/%: $(B)/tests/realkafka/%.o $(addprefix $(B)/,$(FAULT_OBJS) $(HARNESS_OBJS)) \
                            $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

test-realkafka: $(BINS) kafka-jars $(addprefix $(BUILD)/,$(REALKAFKA_TESTS))
	@set -e; for t in $(addprefix $(BUILD)/,$(REALKAFKA_TESTS)); do \
	    echo "== $$t"; KINFER_BIN=$(BUILD) KINFER_KAFKA_JARS=$(KAFKA_DIR)/jars \
	    KINFER_KAFKA39_JARS=$(KAFKA39_DIR)/jars KINFER_KAFKA_NODE=deploy/kafka/node.sh $$t; done

# libFuzzer targets, built with clang straight from the common/ sources they
# need (not from $(BUILD)): make fuzz [FUZZ_SECONDS=60].  A finding fails the
# target and leaves its input in build-fuzz/artifacts/.
FUZZ_BUILD      ?= build-fuzz
FUZZ_SECONDS    ?= 60
TEST_FUZZ_SECONDS ?= 15
# the chain mapper is mostly kf_result_decode, fuzzed for FUZZ_SECONDS above
FUZZ_CHAIN_SECONDS ?= 15
FUZZ_CC         ?= clang
FUZZ_CFLAGS      = -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
                   -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all $(WARN) \
                   -Icommon $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_JOB_SRCS    = common/job_codec.c common/mp_bound.c common/mp_field.c common/mp_pack.c common/kf_util.c common/kf_error.c
FUZZ_MODEL_SRCS  = common/model.c common/model_file.c common/model_math.c common/model_ensemble.c $(FUZZ_JOB_SRCS)

$(FUZZ_BUILD)/fuzz_job_decode: tests/fuzz/fuzz_job_decode.c $(FUZZ_JOB_SRCS)
$(FUZZ_BUILD)/fuzz_model_decode: tests/fuzz/fuzz_model_decode.c $(FUZZ_MODEL_SRCS)
$(FUZZ_BUILD)/fuzz_result_decode: tests/fuzz/fuzz_result_decode.c common/kf_result.c common/mp_field.c \
                                  common/mp_bound.c common/kf_util.c
$(FUZZ_BUILD)/fuzz_chain_map: tests/fuzz/fuzz_chain_map.c worker/chain.c common/kf_result.c \
                              $(FUZZ_JOB_SRCS)
$(FUZZ_BUILD)/fuzz_%:
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) $(KF_LIBS)

$(FUZZ_BUILD)/fuzz_stats_decode: tests/fuzz/fuzz_stats_decode.c worker/lag.c common/kf_util.c
$(FUZZ_BUILD)/fuzz_prom_decode: tests/fuzz/fuzz_prom_decode.c producer-tool/prom_text.c
$(FUZZ_BUILD)/fuzz_keyfile_decode: tests/fuzz/fuzz_keyfile_decode.c producer-tool/signer.c \
                                   common/kf_sign.c common/job_codec.c common/mp_bound.c \
                                   common/mp_field.c common/mp_pack.c common/kf_util.c common/kf_error.c \
                                   common/kf_keys.c

# One run per fuzzer: fuzz-run-NAME runs FUZZ_BIN_NAME (default
# fuzz_NAME_decode) for FUZZ_SECS_NAME (default FUZZ_SECONDS) seconds with the
# dictionary and seed corpus FUZZ_SEED_NAME (default NAME).  Small parsers
# get FUZZ_SMALL_SECONDS (their input space is small); the chain mapper is
# mostly kf_result_decode, fuzzed by fuzz-run-result.  Each run is a target
# of its own so that `make -j2 -O fuzz` (as make test does) runs two at a
# time, one per core, with each run's output kept together.
FUZZ_NAMES         = job model result stats prom keyfile chain
FUZZ_SMALL_SECONDS ?= 15
FUZZ_BIN_chain     = fuzz_chain_map
FUZZ_SEED_chain    = result
FUZZ_SECS_keyfile  = $(FUZZ_SMALL_SECONDS)
FUZZ_SECS_chain    = $(FUZZ_CHAIN_SECONDS)

fuzz: $(addprefix fuzz-run-,$(FUZZ_NAMES))

.SECONDEXPANSION:
fuzz-run-%: $(FUZZ_BUILD)/$$(or $$(FUZZ_BIN_$$*),fuzz_$$*_decode)
	@mkdir -p $(FUZZ_BUILD)/corpus/$* $(FUZZ_BUILD)/artifacts
	@echo "== $(notdir $<) for $(or $(FUZZ_SECS_$*),$(FUZZ_SECONDS)) s"
	@UBSAN_OPTIONS=print_stacktrace=1 $< \
	    -max_total_time=$(or $(FUZZ_SECS_$*),$(FUZZ_SECONDS)) -timeout=10 -malloc_limit_mb=256 \
	    -max_len=65536 -dict=tests/fuzz/$(or $(FUZZ_SEED_$*),$*).dict -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_BUILD)/artifacts/$*- \
	    $(FUZZ_BUILD)/corpus/$* tests/fuzz/corpus/$(or $(FUZZ_SEED_$*),$*)

asan:
	$(MAKE) -j$(NPROC) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    tests-build
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    $(MAKE) BUILD=build-asan OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" test-unit test-integration

# The fault suite on the same sanitized build (every worker, the dev broker and
# the tests run under ASan/UBSan; a report in any process log fails its case).
asan-faults:
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    $(MAKE) BUILD=build-asan OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" test-faults

run: deps all
	@bash deploy/run-demo.sh $(BUILD)

# Throughput and latency on this machine (not part of `make test`): a private
# stack, the reference workloads W1-W3, the tables of docs/performance.md.
# BENCH_SOAK_S=600 adds a long open-loop soak sampling the worker's RSS.
bench: deps all
	@bash deploy/bench.sh $(BUILD)

# Style is mechanical: the repository's .clang-format (Debian's clang-format
# 14).  make format rewrites the C files; make test checks them unchanged.
FORMAT_FILES = $(shell git ls-files '*.c' '*.h' 2>/dev/null)

format:
	clang-format -i $(FORMAT_FILES)

test-format:
	@bad=$$(for f in $(FORMAT_FILES); do clang-format "$$f" | cmp -s - "$$f" || echo "$$f"; done); \
	if [ -n "$$bad" ]; then echo "not formatted (run make format):"; echo "$$bad"; exit 1; fi; \
	echo "format: ok ($(words $(FORMAT_FILES)) files)"

deps:
	@bash deploy/install-deps.sh

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
