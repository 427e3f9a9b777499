/*
 * eqd_threadpool.h -- persistent pthread pool (parallel-for), see
 * threadpool.c.  A NULL pool means "run on the caller".
 */
#ifndef EQD_THREADPOOL_H_
#define EQD_THREADPOOL_H_

typedef struct eqd_pool eqd_pool;
typedef void (*eqd_task_fn)(void* ctx, int task, int thread);

/* nthreads counts the caller; returns NULL for nthreads < 2 or on failure. */
eqd_pool* eqd_pool_create(int nthreads);
int eqd_pool_threads(const eqd_pool* p);
void eqd_pool_run(eqd_pool* p, eqd_task_fn fn, void* ctx, int ntasks);
void eqd_pool_destroy(eqd_pool* p);

#endif /* EQD_THREADPOOL_H_ */
