/*
 * iobuf.h: a growable byte buffer with a read cursor, used for every socket's
 * input and output queues and for building protocol messages. Bytes live in
 * data[start, end); consuming advances start, appending writes at end.
 *
 * Out of memory: a buffer that cannot grow is marked failed, and what is
 * appended to it from then on is dropped. Its owner closes the one
 * connection it belongs to (io_read() and io_flush() report it as an error;
 * a buffer built to be sent is checked before it is used): what a client
 * makes pgmux buffer never ends the process.
 */
#ifndef PGMUX_IOBUF_H
#define PGMUX_IOBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Offsets are 32 bits: every connection has three or more of these, and no
 * buffer may hold IOBUF_MAX_CAP bytes or more (growing past it fails like a
 * failed allocation; every message is far smaller, see max_packet_size).
 */
struct iobuf {
	uint8_t *data;
	uint32_t start; /* first unread byte */
	uint32_t end;   /* one past the last written byte */
	uint32_t cap;
	bool failed; /* an allocation failed: bytes appended since were dropped */
};

#define IOBUF_MAX_CAP ((size_t)UINT32_MAX)

void iobuf_init(struct iobuf *buf);
void iobuf_free(struct iobuf *buf);

static inline size_t iobuf_len(const struct iobuf *buf)
{
	return buf->end - buf->start;
}

static inline uint8_t *iobuf_head(const struct iobuf *buf)
{
	return buf->data + buf->start;
}

/* Make room for at least n more bytes at the end; returns the write pointer, or NULL (buf failed) on OOM. */
uint8_t *iobuf_reserve(struct iobuf *buf, size_t n);

/* Record that n bytes were written at the pointer iobuf_reserve() returned. */
static inline void iobuf_commit(struct iobuf *buf, size_t n)
{
	buf->end += (uint32_t)n; /* n is at most what iobuf_reserve() was asked for */
}

void iobuf_append(struct iobuf *buf, const void *data, size_t len);
void iobuf_append_u8(struct iobuf *buf, uint8_t v);
void iobuf_append_u16(struct iobuf *buf, uint16_t v); /* network byte order */
void iobuf_append_u32(struct iobuf *buf, uint32_t v); /* network byte order */
void iobuf_append_str(struct iobuf *buf, const char *s); /* with its NUL */

/* Drop n bytes from the front. Resets to empty cheaply when everything is consumed. */
void iobuf_consume(struct iobuf *buf, size_t n);

/* Empty it (and forget that it failed: what it held is discarded). */
void iobuf_reset(struct iobuf *buf);

/* Release memory beyond a small floor when the buffer is empty (idle connections stay small). */
void iobuf_shrink(struct iobuf *buf);

/* Read network-order integers from raw bytes. */
static inline uint32_t get_u32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)(((uint16_t)p[0] << 8) | p[1]);
}

static inline void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

#endif
