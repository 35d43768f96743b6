/*
 * iobuf.c: growable byte buffers (see iobuf.h). Growth doubles the capacity
 * and first slides unread bytes to the front, so a buffer that is drained as
 * fast as it fills never grows.
 */
#include "iobuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IOBUF_MIN_CAP 512
#define IOBUF_KEEP_CAP 16384

void iobuf_init(struct iobuf *buf)
{
	buf->data = NULL;
	buf->start = buf->end = buf->cap = 0;
	buf->failed = false;
}

void iobuf_free(struct iobuf *buf)
{
	free(buf->data);
	iobuf_init(buf);
}

uint8_t *iobuf_reserve(struct iobuf *buf, size_t n)
{
	size_t len = buf->end - buf->start;
	size_t need, newcap;
	uint8_t *p;

	if (buf->failed)
		return NULL;
	if (buf->cap - buf->end >= n)
		return buf->data + buf->end;
	/* Sliding the unread bytes down may be enough. */
	if (buf->start > 0 && buf->cap - len >= n && len <= buf->start) {
		memcpy(buf->data, buf->data + buf->start, len);
		buf->start = 0;
		buf->end = (uint32_t)len;
		return buf->data + buf->end;
	}
	if (buf->start > 0 && buf->cap - len >= n) {
		memmove(buf->data, buf->data + buf->start, len);
		buf->start = 0;
		buf->end = (uint32_t)len;
		return buf->data + buf->end;
	}
	if (n > IOBUF_MAX_CAP - len) {
		buf->failed = true;
		return NULL;
	}
	need = len + n;
	newcap = buf->cap ? buf->cap : IOBUF_MIN_CAP;
	while (newcap < need && newcap <= IOBUF_MAX_CAP / 2)
		newcap *= 2;
	if (newcap < need)
		newcap = need;
	if (buf->start > 0) {
		memmove(buf->data, buf->data + buf->start, len);
		buf->start = 0;
		buf->end = (uint32_t)len;
	}
	p = realloc(buf->data, newcap);
	if (p == NULL) {
		/* The owner closes its connection (see iobuf.h); the process goes on. */
		buf->failed = true;
		return NULL;
	}
	buf->data = p;
	buf->cap = (uint32_t)newcap;
	return buf->data + buf->end;
}

void iobuf_append(struct iobuf *buf, const void *data, size_t len)
{
	uint8_t *p;

	if (len == 0 || (p = iobuf_reserve(buf, len)) == NULL)
		return;
	memcpy(p, data, len);
	buf->end += (uint32_t)len;
}

void iobuf_append_u8(struct iobuf *buf, uint8_t v)
{
	uint8_t *p = iobuf_reserve(buf, 1);

	if (p == NULL)
		return;
	*p = v;
	buf->end += 1;
}

void iobuf_append_u16(struct iobuf *buf, uint16_t v)
{
	uint8_t *p = iobuf_reserve(buf, 2);

	if (p == NULL)
		return;
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
	buf->end += 2;
}

void iobuf_append_u32(struct iobuf *buf, uint32_t v)
{
	uint8_t *p = iobuf_reserve(buf, 4);

	if (p == NULL)
		return;
	put_u32(p, v);
	buf->end += 4;
}

void iobuf_append_str(struct iobuf *buf, const char *s)
{
	iobuf_append(buf, s, strlen(s) + 1);
}

void iobuf_consume(struct iobuf *buf, size_t n)
{
	buf->start += (uint32_t)n; /* n <= iobuf_len(buf) */
	if (buf->start >= buf->end)
		buf->start = buf->end = 0;
}

void iobuf_reset(struct iobuf *buf)
{
	buf->start = buf->end = 0;
	buf->failed = false; /* what it held is discarded anyway */
}

void iobuf_shrink(struct iobuf *buf)
{
	/* A failed buffer stays failed until its owner has closed the connection. */
	if (buf->start == buf->end && buf->cap > IOBUF_KEEP_CAP && !buf->failed) {
		free(buf->data);
		iobuf_init(buf);
	}
}
