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
PKGS      = rdkafka msgpack hiredis openblas jansson libcrypto
WARN      = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wno-missing-field-initializers
KF_CFLAGS = -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) -MMD -MP -Icommon \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
KF_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm $(LDLIBS)
SAN       =

COMMON_OBJS = common/kf_log.o common/kf_error.o common/kf_util.o common/kf_config.o \
              common/mp_bound.o common/job_codec.o common/model.o common/model_math.o \
              common/model_ensemble.o common/model_registry.o \
              common/kf_redis.o common/kf_kafka.o common/kf_keys.o
WORKER_OBJS = worker/main.o worker/worker.o worker/batch.o worker/commit.o worker/dlq.o \
              worker/model_store.o worker/queue.o worker/offsets.o worker/model_store_registry.o
KINFER_OBJS = producer-tool/main.o producer-tool/cmd_submit.o producer-tool/cmd_result.o \
              producer-tool/cmd_model.o producer-tool/input.o producer-tool/result_json.o \
              producer-tool/cmd_registry.o \
              producer-tool/cmd_quota.o
DEVBROKER_OBJS = deploy/devbroker/devbroker.o
HARNESS_OBJS   = tests/harness/stack.o tests/harness/kt_job.o

UNIT_TESTS        = $(patsubst %.c,%,$(wildcard tests/unit/test_*.c))
INTEGRATION_TESTS = $(patsubst %.c,%,$(wildcard tests/integration/test_*.c))

BINS = $(BUILD)/kinfer-worker $(BUILD)/kinfer $(BUILD)/kinfer-devbroker $(BUILD)/kinfer-convert
B    = $(BUILD)/obj

all: $(BINS)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(KF_CFLAGS) $(SAN) -c $< -o $@

# worker/step.lua is compiled in as a C string literal, one line at a time.
$(B)/gen/step_lua.h: worker/step.lua
	@mkdir -p $(dir $@)
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $< > $@

$(B)/worker/commit.o: $(B)/gen/step_lua.h
$(B)/worker/commit.o: KF_CFLAGS += -I$(B)/gen

$(BUILD)/libkinfer.a: $(addprefix $(B)/,$(COMMON_OBJS))
	ar rcs $@ $^

$(BUILD)/kinfer-worker: $(addprefix $(B)/,$(WORKER_OBJS)) $(BUILD)/libkinfer.a
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS)

$(BUILD)/kinfer: $(addprefix $(B)/,$(KINFER_OBJS)) $(BUILD)/libkinfer.a
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS)

$(BUILD)/kinfer-devbroker: $(addprefix $(B)/,$(DEVBROKER_OBJS)) $(BUILD)/libkinfer.a
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS)

# A Python script (numpy weights to a model file), next to the programs.
$(BUILD)/kinfer-convert: producer-tool/kinfer-convert
	@mkdir -p $(dir $@)
	cp $< $@

$(BUILD)/tests/%: $(B)/tests/%.o $(addprefix $(B)/,$(HARNESS_OBJS)) $(BUILD)/libkinfer.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(KF_LIBS) -lcmocka

# This one runs the worker's model store in-process.
$(BUILD)/tests/integration/test_model_store: $(B)/worker/model_store.o \
                                             $(B)/worker/model_store_registry.o

# Python clients and references use Debian's interpreter, which has the apt
# packages (numpy, msgpack, confluent-kafka, redis); the python3 first on PATH
# may be a different build without them.
PYTHON = /usr/bin/python3

.PHONY: all run test test-unit test-integration test-py asan deps clean bench
.PRECIOUS: $(B)/%.o

tests-build: $(BINS) $(addprefix $(BUILD)/,$(UNIT_TESTS) $(INTEGRATION_TESTS))

test: deps
	$(MAKE) tests-build
	$(MAKE) --no-print-directory test-unit test-integration test-py

test-unit: $(addprefix $(BUILD)/,$(UNIT_TESTS))
	@set -e; for t in $^; do echo "== $$t"; $$t; done

test-integration: $(BINS) $(addprefix $(BUILD)/,$(INTEGRATION_TESTS))
	@set -e; for t in $(addprefix $(BUILD)/,$(INTEGRATION_TESTS)); do \
	    echo "== $$t"; KINFER_BIN=$(BUILD) $$t; done

test-py: $(BINS)
	@set -e; for t in tests/py/test_*.py; do [ -e "$$t" ] || continue; echo "== $$t"; \
	    KINFER_BIN=$(BUILD) $(PYTHON) $$t; done

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    tests-build
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    $(MAKE) BUILD=build-asan OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" test-unit test-integration

run: deps all
	@deploy/run-demo.sh $(BUILD)

deps:
	@deploy/install-deps.sh

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
