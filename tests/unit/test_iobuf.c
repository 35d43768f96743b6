/*
 * test_iobuf.c: unit tests for src/iobuf.c: reserving and committing, growth
 * by doubling, sliding unread bytes to the front, consuming, shrinking, the
 * network-order appenders and readers, and running out of memory.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "iobuf.h"

/*
 * realloc, failing on demand: this test is linked with -Wl,--wrap=realloc
 * (Makefile.am), so iobuf.c's calls come here. fail_reallocs is how many of
 * the next calls fail.
 */
void *__real_realloc(void *p, size_t size);
void *__wrap_realloc(void *p, size_t size);

static int fail_reallocs;

void *__wrap_realloc(void *p, size_t size)
{
	if (fail_reallocs > 0) {
		fail_reallocs--;
		return NULL;
	}
	return __real_realloc(p, size);
}

/* Fill a buffer with n bytes whose values follow their position, so moves are detectable. */
static void fill_pattern(struct iobuf *buf, size_t n)
{
	uint8_t *p = iobuf_reserve(buf, n);

	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 7 + 3);
	iobuf_commit(buf, n);
}

/* Check that the unread bytes are the pattern starting at position `from`. */
static void assert_pattern(const struct iobuf *buf, size_t from, size_t n)
{
	cr_assert_eq(iobuf_len(buf), n);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(iobuf_head(buf)[i], (uint8_t)((from + i) * 7 + 3), "byte %zu differs", i);
}

Test(iobuf, init_is_empty_and_unallocated)
{
	struct iobuf buf;

	iobuf_init(&buf);
	cr_assert_null(buf.data);
	cr_assert_eq(buf.start, 0);
	cr_assert_eq(buf.end, 0);
	cr_assert_eq(buf.cap, 0);
	cr_assert_eq(iobuf_len(&buf), 0);
	iobuf_free(&buf);
}

Test(iobuf, reserve_then_commit)
{
	struct iobuf buf;
	uint8_t *p;

	iobuf_init(&buf);
	p = iobuf_reserve(&buf, 10);
	cr_assert_not_null(p);
	cr_assert_eq(buf.cap, 512, "first allocation is the 512-byte floor, got %zu", buf.cap);
	cr_assert_eq(iobuf_len(&buf), 0, "reserve alone must not change the length");
	memcpy(p, "0123456789", 10);
	iobuf_commit(&buf, 4);
	cr_assert_eq(iobuf_len(&buf), 4);
	cr_assert_eq(memcmp(iobuf_head(&buf), "0123", 4), 0);
	/* The next reserve continues right after the committed bytes. */
	p = iobuf_reserve(&buf, 2);
	cr_assert_eq(p, buf.data + 4);
	iobuf_free(&buf);
}

Test(iobuf, reserve_within_capacity_does_not_move)
{
	struct iobuf buf;
	uint8_t *data;

	iobuf_init(&buf);
	fill_pattern(&buf, 100);
	data = buf.data;
	cr_assert_eq(iobuf_reserve(&buf, 412), data + 100);
	cr_assert_eq(buf.data, data);
	cr_assert_eq(buf.cap, 512);
	iobuf_free(&buf);
}

Test(iobuf, grows_by_doubling)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fill_pattern(&buf, 512);
	cr_assert_eq(buf.cap, 512);
	iobuf_append_u8(&buf, (uint8_t)(512 * 7 + 3));
	cr_assert_eq(buf.cap, 1024);
	assert_pattern(&buf, 0, 513);
	/* A large request doubles as often as needed: 1024 -> 8192 for 513 + 5000 bytes. */
	iobuf_reserve(&buf, 5000);
	cr_assert_eq(buf.cap, 8192);
	assert_pattern(&buf, 0, 513);
	iobuf_free(&buf);
}

Test(iobuf, first_reserve_larger_than_floor)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_reserve(&buf, 3000);
	cr_assert_eq(buf.cap, 4096);
	iobuf_free(&buf);
}

Test(iobuf, slide_without_overlap)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fill_pattern(&buf, 512);
	iobuf_consume(&buf, 500);
	cr_assert_eq(buf.start, 500);
	/* 12 unread bytes, 100 wanted: sliding to the front is enough, no growth. */
	cr_assert_eq(iobuf_reserve(&buf, 100), buf.data + 12);
	cr_assert_eq(buf.cap, 512);
	cr_assert_eq(buf.start, 0);
	cr_assert_eq(buf.end, 12);
	assert_pattern(&buf, 500, 12);
	iobuf_free(&buf);
}

Test(iobuf, slide_with_overlap)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fill_pattern(&buf, 512);
	iobuf_consume(&buf, 100);
	/* 412 unread bytes overlap their destination; exactly 100 free after sliding. */
	cr_assert_eq(iobuf_reserve(&buf, 100), buf.data + 412);
	cr_assert_eq(buf.cap, 512);
	cr_assert_eq(buf.start, 0);
	assert_pattern(&buf, 100, 412);
	iobuf_free(&buf);
}

Test(iobuf, grow_with_consumed_prefix_keeps_unread_bytes)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fill_pattern(&buf, 512);
	iobuf_consume(&buf, 10);
	iobuf_reserve(&buf, 600);
	/* 502 unread + 600 needs 1102: 512 -> 1024 -> 2048. */
	cr_assert_eq(buf.cap, 2048);
	cr_assert_eq(buf.start, 0);
	assert_pattern(&buf, 10, 502);
	iobuf_free(&buf);
}

Test(iobuf, consume_partial_and_all)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_append(&buf, "abcdef", 6);
	iobuf_consume(&buf, 2);
	cr_assert_eq(iobuf_len(&buf), 4);
	cr_assert_eq(memcmp(iobuf_head(&buf), "cdef", 4), 0);
	iobuf_consume(&buf, 4);
	cr_assert_eq(iobuf_len(&buf), 0);
	cr_assert_eq(buf.start, 0, "consuming everything resets the cursor");
	cr_assert_eq(buf.end, 0);
	cr_assert_not_null(buf.data, "memory is kept for reuse");
	iobuf_free(&buf);
}

Test(iobuf, reset_empties_but_keeps_memory)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_append(&buf, "abc", 3);
	iobuf_consume(&buf, 1);
	iobuf_reset(&buf);
	cr_assert_eq(buf.start, 0);
	cr_assert_eq(buf.end, 0);
	cr_assert_eq(buf.cap, 512);
	cr_assert_not_null(buf.data);
	iobuf_free(&buf);
	cr_assert_null(buf.data);
	cr_assert_eq(buf.cap, 0);
}

Test(iobuf, shrink_keeps_small_buffers)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_reserve(&buf, 16384);
	cr_assert_eq(buf.cap, 16384);
	iobuf_shrink(&buf);
	cr_assert_eq(buf.cap, 16384, "a buffer at the floor is kept");
	cr_assert_not_null(buf.data);
	iobuf_free(&buf);
}

Test(iobuf, shrink_releases_large_empty_buffer)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fill_pattern(&buf, 20000);
	cr_assert_eq(buf.cap, 32768);
	iobuf_shrink(&buf);
	cr_assert_eq(buf.cap, 32768, "a non-empty buffer is never shrunk");
	assert_pattern(&buf, 0, 20000);
	iobuf_consume(&buf, 20000);
	iobuf_shrink(&buf);
	cr_assert_null(buf.data);
	cr_assert_eq(buf.cap, 0);
	/* Still usable afterwards. */
	iobuf_append_u8(&buf, 0x5a);
	cr_assert_eq(iobuf_len(&buf), 1);
	cr_assert_eq(iobuf_head(&buf)[0], 0x5a);
	iobuf_free(&buf);
}

Test(iobuf, append_zero_length_is_noop)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_append(&buf, "x", 0);
	cr_assert_null(buf.data);
	cr_assert_eq(iobuf_len(&buf), 0);
	iobuf_free(&buf);
}

Test(iobuf, append_integers_in_network_order)
{
	struct iobuf buf;
	static const uint8_t want[] = {0xab, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff};

	iobuf_init(&buf);
	iobuf_append_u8(&buf, 0xab);
	iobuf_append_u16(&buf, 0x1234);
	iobuf_append_u32(&buf, 0xdeadbeefu);
	iobuf_append_u32(&buf, 1);
	iobuf_append_u16(&buf, 0xffff);
	cr_assert_eq(iobuf_len(&buf), sizeof(want));
	cr_assert_eq(memcmp(iobuf_head(&buf), want, sizeof(want)), 0);
	iobuf_free(&buf);
}

Test(iobuf, append_str_includes_nul)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_append_str(&buf, "user");
	iobuf_append_str(&buf, "");
	iobuf_append(&buf, "xy", 2);
	cr_assert_eq(iobuf_len(&buf), 8);
	cr_assert_eq(memcmp(iobuf_head(&buf), "user\0\0xy", 8), 0);
	iobuf_free(&buf);
}

Test(iobuf, integer_helpers)
{
	uint8_t b[4];

	put_u32(b, 0x01020304u);
	cr_assert_eq(b[0], 1);
	cr_assert_eq(b[1], 2);
	cr_assert_eq(b[2], 3);
	cr_assert_eq(b[3], 4);
	cr_assert_eq(get_u32(b), 0x01020304u);
	put_u32(b, 0xfffefdfcu);
	cr_assert_eq(get_u32(b), 0xfffefdfcu);
	cr_assert_eq(get_u16(b), 0xfffe);
	cr_assert_eq(get_u16(b + 2), 0xfdfc);
}

/* Out of memory marks the buffer failed and drops what is appended; it never aborts (see iobuf.h). */
Test(iobuf, a_buffer_that_cannot_grow_fails_without_aborting)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_append_str(&buf, "kept");
	cr_assert_null(iobuf_reserve(&buf, SIZE_MAX - 16), "an impossible size was reserved");
	cr_assert(buf.failed);
	iobuf_append(&buf, "lost", 4);
	iobuf_append_u8(&buf, 1);
	iobuf_append_u16(&buf, 2);
	iobuf_append_u32(&buf, 3);
	cr_assert_null(iobuf_reserve(&buf, 1), "a failed buffer stays failed");
	cr_assert_eq(iobuf_len(&buf), 5, "what came before the failure is kept, nothing after");
	cr_assert_str_eq((const char *)iobuf_head(&buf), "kept");
	iobuf_free(&buf);
	cr_assert_not(buf.failed, "a freed buffer is usable again");
}

/*
 * realloc itself fails (a peer's message larger than the process may
 * allocate): the buffer is marked failed and keeps what it held, appends are
 * dropped, a shrink keeps it failed until its owner gives up on it, and a
 * reset makes it usable again.
 */
Test(iobuf, failed_growth_keeps_the_bytes_and_drops_the_rest)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fill_pattern(&buf, 20000); /* beyond what a shrink keeps */
	fail_reallocs = 1;
	cr_assert_null(iobuf_reserve(&buf, 40000), "a reserve whose realloc failed returned memory");
	cr_assert_eq(fail_reallocs, 0, "growing did not call realloc");
	cr_assert(buf.failed);
	assert_pattern(&buf, 0, 20000);
	iobuf_append(&buf, "more", 4);
	iobuf_append_str(&buf, "and more");
	iobuf_append_u16(&buf, 7);
	assert_pattern(&buf, 0, 20000);
	iobuf_consume(&buf, 20000);
	iobuf_shrink(&buf);
	cr_assert(buf.failed, "a shrink forgot that the buffer failed");
	cr_assert_not_null(buf.data, "a shrink freed a failed buffer before its owner gave up on it");
	iobuf_reset(&buf);
	cr_assert_not(buf.failed, "a reset buffer is still failed");
	iobuf_append(&buf, "again", 5);
	cr_assert_eq(iobuf_len(&buf), 5);
	cr_assert(memcmp(iobuf_head(&buf), "again", 5) == 0);
	iobuf_free(&buf);
}

/* Growth slides the unread bytes down before it reallocates: when that fails, they are still all there. */
Test(iobuf, failed_growth_after_a_consume_keeps_the_unread_bytes)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fill_pattern(&buf, 400);
	iobuf_consume(&buf, 300);
	fail_reallocs = 1;
	cr_assert_null(iobuf_reserve(&buf, 4096));
	cr_assert(buf.failed);
	assert_pattern(&buf, 300, 100);
	iobuf_free(&buf);
}

/* The very first allocation of a buffer fails: nothing is held, nothing leaks, and freeing it is safe. */
Test(iobuf, failed_first_allocation)
{
	struct iobuf buf;

	iobuf_init(&buf);
	fail_reallocs = 1;
	iobuf_append_u32(&buf, 42);
	cr_assert(buf.failed);
	cr_assert_eq(iobuf_len(&buf), 0);
	cr_assert_null(buf.data);
	iobuf_free(&buf);
	cr_assert_not(buf.failed);
}
