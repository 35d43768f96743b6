/*
 * monitor.h: health checks. A dedicated thread keeps one monitoring
 * connection to every instance of the cluster (outside the pool caps) and
 * asks each, every health_check_interval, whether it is a writer or a reader
 * and how far behind it is. What it learns goes to pool_instance_report(),
 * which moves the writer pools on failover.
 */
#ifndef PGMUX_MONITOR_H
#define PGMUX_MONITOR_H

struct target;

int monitor_start(void);
void monitor_stop(void);

/* Check t now rather than at the next interval (a backend connection to it failed). Thread safe. */
void monitor_check_now(struct target *t);

/* Look at the list of instances again now (a cutover replaced it). Thread safe. */
void monitor_rescan(void);

#endif
