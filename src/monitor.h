/*
 * monitor.h: health checks. A dedicated thread keeps one monitoring
 * connection to every instance of the cluster (outside the pool caps) and
 * asks each, every health_check_interval, whether it is a writer or a reader
 * and how far behind it is. What it learns goes to pool_instance_report(),
 * which moves the writer pools on failover. A worker that sees an instance
 * fail asks for a check now through pool_request_health_check(), which
 * wakes the monitor through the hook monitor_start() installs.
 */
#ifndef PGMUX_MONITOR_H
#define PGMUX_MONITOR_H

int monitor_start(void);
void monitor_stop(void);

/* Look at the list of instances again now (a cutover replaced it). Thread safe. */
void monitor_rescan(void);

#endif
