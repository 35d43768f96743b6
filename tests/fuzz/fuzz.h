/*
 * fuzz.h: what every libFuzzer harness under tests/fuzz shares: the entry
 * point's prototype, and FUZZ_CHECK, which turns a broken invariant into a
 * crash that libFuzzer records (with the input that caused it) like any
 * AddressSanitizer or UndefinedBehaviorSanitizer report.
 */
#ifndef PGMUX_FUZZ_H
#define PGMUX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                                     \
	do {                                                                                      \
		if (!(cond)) {                                                                    \
			fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                             \
			fputc('\n', stderr);                                                      \
			abort();                                                                  \
		}                                                                                 \
	} while (0)

#endif
