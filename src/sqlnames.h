/*
 * sqlnames.h: PostgreSQL's keywords and the names of its own functions, as
 * generated into sqlnames.c by contrib/gen-sqlnames.sh. sqlscan.c looks a
 * name before '(' up here to decide whether a text calls code pgmux cannot
 * read.
 */
#ifndef PGMUX_SQLNAMES_H
#define PGMUX_SQLNAMES_H

#include <stddef.h>

/* Sorted (strcmp order), lower case. */
extern const char *const sqlnames_keywords[];
extern const size_t sqlnames_keywords_count;
extern const char *const sqlnames_functions[];
extern const size_t sqlnames_functions_count;

#endif
