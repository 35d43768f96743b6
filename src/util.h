/*
 * util.h: small helpers every module needs: formatting an error message into
 * a caller's buffer, and allocation that treats running out of memory as the
 * broken invariant it is for a proxy (abort with a message, never limp on).
 */
#ifndef PGMUX_UTIL_H
#define PGMUX_UTIL_H

#include <stddef.h>

/* vsnprintf into err; does nothing when err is NULL or errlen is 0. */
void error_printf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
char *xstrdup(const char *s); /* NULL is copied as "" */

#endif
