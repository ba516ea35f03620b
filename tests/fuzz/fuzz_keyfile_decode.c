/* fuzz_keyfile_decode.c - libFuzzer target for what a signer or a worker
 * reads from outside: the client's key file (kc_signer_parse,
 * producer-tool/signer.c) and the signature headers' pieces (kf_hex_decode,
 * kf_sign_kid_valid, kf_sign_alg_parse, common/kf_sign.c).  Besides "no
 * crash, no leak": a parsed key file has a valid user, key id and
 * algorithm; hex that decodes re-encodes to the same digits (in lowercase).
 * Built and run by `make fuzz`. */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../producer-tool/signer.h"
#include "kf_sign.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "fuzz_keyfile_decode: %s\n", #cond);                       \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        kc_signer_t s;
        char err[256] = "";
        unsigned char bin[64];
        char hex[129];
        const char *text = (const char *)data;

        if (kc_signer_parse(text, size, &s, err, sizeof(err)) == 0) {
                CHECK(job_name_valid(s.user, strlen(s.user), JOB_USER_MAX));
                CHECK(kf_sign_kid_valid(s.kid, strlen(s.kid)));
                CHECK(s.alg == KF_SIGN_HMAC || s.alg == KF_SIGN_ED25519);
        } else {
                CHECK(err[0]);
        }
        if (size % 2 == 0 && size / 2 <= sizeof(bin) &&
            kf_hex_decode(text, size, bin, size / 2) == 0) {
                kf_hex_encode(bin, size / 2, hex);
                for (size_t i = 0; i < size; i++)
                        CHECK(hex[i] == tolower((unsigned char)text[i]));
        }
        if (kf_sign_kid_valid(text, size))
                CHECK(size == KF_SIGN_KID_LEN && text[0] == 'k');
        (void)kf_sign_alg_parse(text, size);
        return 0;
}
