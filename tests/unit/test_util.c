/*
 * test_util.c: unit tests for src/util.c: error_printf(), and the
 * allocators that abort when memory runs out (util.h says where pgmux uses
 * them): they abort rather than return NULL, and copy what they are given.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

Test(error_printf, formats_into_the_buffer_and_truncates)
{
	char err[8];

	error_printf(err, sizeof(err), "%s %d", "port", 65536);
	cr_assert_str_eq(err, "port 65");
	error_printf(NULL, 10, "%s", "nothing happens");
	error_printf(err, 0, "%s", "nothing happens");
	cr_assert_str_eq(err, "port 65");
}

Test(alloc, xstrdup_copies_and_null_becomes_empty)
{
	char *copy = xstrdup("pgmux");
	char *empty = xstrdup(NULL);

	cr_assert_str_eq(copy, "pgmux");
	cr_assert_str_eq(empty, "");
	free(copy);
	free(empty);
}

/* xstrndup copies exactly len bytes, a NUL among them too, and ends them with one. */
Test(alloc, xstrndup_copies_len_bytes)
{
	char *copy = xstrndup("ab\0cd", 4);

	cr_assert(memcmp(copy, "ab\0c", 4) == 0);
	cr_assert_eq(copy[4], '\0');
	free(copy);
	copy = xstrndup("", 0);
	cr_assert_str_eq(copy, "");
	free(copy);
}

Test(alloc, zero_sizes_give_memory)
{
	void *a = xmalloc(0), *b = xcalloc(0, 8), *c = xrealloc(NULL, 0);

	cr_assert_not_null(a);
	cr_assert_not_null(b);
	cr_assert_not_null(c);
	free(a);
	free(b);
	free(c);
}

Test(alloc, xrealloc_keeps_the_contents)
{
	char *p = xmalloc(4);

	memcpy(p, "abc", 4);
	p = xrealloc(p, 1 << 20);
	cr_assert_str_eq(p, "abc");
	free(p);
}

/* Out of memory (a size no allocator can give stands in for it) ends the process with SIGABRT, never NULL. */
Test(alloc, xmalloc_aborts_when_out_of_memory, .signal = SIGABRT)
{
	(void)xmalloc(SIZE_MAX);
}

Test(alloc, xcalloc_aborts_on_an_overflowing_size, .signal = SIGABRT)
{
	(void)xcalloc(SIZE_MAX / 2, 4);
}

Test(alloc, xrealloc_aborts_when_out_of_memory, .signal = SIGABRT)
{
	(void)xrealloc(NULL, SIZE_MAX);
}

Test(alloc, xstrndup_aborts_when_out_of_memory, .signal = SIGABRT)
{
	(void)xstrndup("", SIZE_MAX - 1);
}

Test(alloc, out_of_memory_aborts, .signal = SIGABRT)
{
	out_of_memory("a test's timer");
}
