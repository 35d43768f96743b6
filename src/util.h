/*
 * util.h: small helpers every module needs: formatting an error message into
 * a caller's buffer, and the allocators for memory whose loss no smaller
 * unit than the process can answer for.
 *
 * Out of memory (src/README.md, "Out of memory", has the whole rule): a
 * failed allocation is never ignored, and ends the smallest thing that can
 * end cleanly where it happened. Memory whose size a client or a server
 * decides (buffers, copies of messages) is checked and fails only that
 * connection. The allocators here are for the rest, small and bounded by
 * pgmux, where the code has no way to fail anything smaller: they abort with
 * a message, since when such an allocation fails the process as a whole is
 * out of memory.
 */
#ifndef PGMUX_UTIL_H
#define PGMUX_UTIL_H

#include <stddef.h>

/* vsnprintf into err; does nothing when err is NULL or errlen is 0. */
void error_printf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s); /* NULL is copied as "" */
char *xstrndup(const char *s, size_t len); /* the len bytes at s (NULs too), then a NUL */
/* A malloc'd string formatted as printf() would. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* For an allocation of a library (an event, say) that failed with no error path: the message, then abort. */
void out_of_memory(const char *what) __attribute__((noreturn));

#endif
