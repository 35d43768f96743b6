/*
 * util.c: the helpers of util.h.
 */
#include "util.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void error_printf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void out_of_memory(const char *what)
{
	fprintf(stderr, "pgmux: out of memory allocating %s\n", what);
	abort();
}

static void out_of_memory_size(size_t size)
{
	fprintf(stderr, "pgmux: out of memory allocating %zu bytes\n", size);
	abort();
}

void *xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);

	if (p == NULL)
		out_of_memory_size(size);
	return p;
}

void *xcalloc(size_t count, size_t size)
{
	void *p = calloc(count ? count : 1, size ? size : 1);

	if (p == NULL)
		out_of_memory_size(size != 0 && count > SIZE_MAX / size ? SIZE_MAX : count * size);
	return p;
}

void *xrealloc(void *p, size_t size)
{
	void *grown = realloc(p, size ? size : 1);

	if (grown == NULL)
		out_of_memory_size(size);
	return grown;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s ? s : "");

	if (p == NULL)
		out_of_memory_size(s ? strlen(s) + 1 : 1);
	return p;
}

char *xstrndup(const char *s, size_t len)
{
	char *p = xmalloc(len + 1);

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (n < 0)
		out_of_memory("a formatted string");
	return p;
}
