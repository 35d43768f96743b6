/*
 * harness_aws.h: the AWS side of the integration tests: the Python that has
 * moto, boto3 and botocore ($PGMUX_TEST_PYTHON, else python3), moto_server on
 * a free loopback port (stopped by its PID), and an environment in which pgmux
 * finds no credentials but those a test gives it. Used by test_aws.c and
 * test_cutover_secretsmgr.c.
 */
#ifndef PGMUX_TEST_HARNESS_AWS_H
#define PGMUX_TEST_HARNESS_AWS_H

#include "harness.h"

/* $PGMUX_TEST_PYTHON, else python3. */
const char *h_python(void);
/* Skip the test (with the reason) unless h_python() can import every module named ("a, b"). */
void h_require_python_modules(const char *modules);
/*
 * No credentials, endpoint, region or proxy from the caller's environment;
 * no instance metadata; shared files that do not exist.
 */
void h_aws_clean_environment(void);
/* Static keys for pgmux (moto takes any). */
void h_aws_use_static_keys(void);

struct h_moto {
	struct h_cmd cmd;
	int port;
	char url[64];
};

/* moto_server on a free loopback port (skips the test without moto); AWS_ENDPOINT_URL points at it. */
void h_moto_start(struct h_moto *m);
/* Stop moto by its PID (h_teardown() would too, should the test fail first). */
void h_moto_stop(struct h_moto *m);
/*
 * Run Python code (boto3 against moto) with the arguments given; fails the
 * test when it fails. Returns its standard output (malloc'd). Without
 * AWS_ACCESS_KEY_ID set, boto3 gets keys of its own (moto's), so that pgmux
 * finds only whatever credentials the test set up for it.
 */
char *h_run_python(const char *code, const char *const args[]);

#endif
