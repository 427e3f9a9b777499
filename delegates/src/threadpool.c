/*
 * threadpool.c -- a minimal persistent pthread pool for parallel-for.
 *
 * eqd_pool_run(pool, fn, ctx, n) runs fn(ctx, task, thread) for task in
 * [0, n) on the caller plus the pool's workers, handing out tasks with an
 * atomic counter, and returns when all have finished.  Each participant has
 * a stable `thread` index in [0, nthreads) for per-thread scratch memory.
 */
#define _POSIX_C_SOURCE 200809L
#include "eqd_threadpool.h"

#include <pthread.h>
#include <stdlib.h>

struct eqd_pool {
  int nthreads; /* including the caller */
  pthread_t* workers;
  pthread_mutex_t mu;
  pthread_cond_t start_cv, done_cv;
  unsigned generation; /* bumped for each run */
  int running;         /* workers still inside the current run */
  int shutdown;
  eqd_task_fn fn;
  void* ctx;
  int ntasks;
  int next; /* next task, taken with __atomic_fetch_add */
};

typedef struct worker_arg {
  eqd_pool* pool;
  int index;
} worker_arg;

static void drain(eqd_pool* p, int thread) {
  for (;;) {
    const int t = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
    if (t >= p->ntasks) break;
    p->fn(p->ctx, t, thread);
  }
}

static void* worker_main(void* arg) {
  worker_arg* wa = (worker_arg*)arg;
  eqd_pool* p = wa->pool;
  const int index = wa->index;
  free(wa);
  unsigned seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->shutdown && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
    if (p->shutdown) break;
    seen = p->generation;
    pthread_mutex_unlock(&p->mu);
    drain(p, index);
    pthread_mutex_lock(&p->mu);
    if (--p->running == 0) pthread_cond_signal(&p->done_cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

eqd_pool* eqd_pool_create(int nthreads) {
  if (nthreads < 2) return NULL;
  eqd_pool* p = (eqd_pool*)calloc(1, sizeof(*p));
  if (!p) return NULL;
  p->workers = (pthread_t*)calloc((size_t)nthreads - 1, sizeof(pthread_t));
  if (!p->workers) {
    free(p);
    return NULL;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->start_cv, NULL);
  pthread_cond_init(&p->done_cv, NULL);
  p->nthreads = 1;
  for (int i = 1; i < nthreads; ++i) {
    worker_arg* wa = (worker_arg*)malloc(sizeof(*wa));
    if (!wa) break;
    wa->pool = p;
    wa->index = i;
    if (pthread_create(&p->workers[i - 1], NULL, worker_main, wa) != 0) {
      free(wa);
      break;
    }
    p->nthreads = i + 1;
  }
  if (p->nthreads < 2) {
    eqd_pool_destroy(p);
    return NULL;
  }
  return p;
}

int eqd_pool_threads(const eqd_pool* p) { return p ? p->nthreads : 1; }

void eqd_pool_run(eqd_pool* p, eqd_task_fn fn, void* ctx, int ntasks) {
  if (ntasks <= 0) return;
  if (!p || ntasks == 1) {
    for (int t = 0; t < ntasks; ++t) fn(ctx, t, 0);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  p->ntasks = ntasks;
  __atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
  p->running = p->nthreads - 1;
  p->generation++;
  pthread_cond_broadcast(&p->start_cv);
  pthread_mutex_unlock(&p->mu);
  drain(p, 0);
  pthread_mutex_lock(&p->mu);
  while (p->running > 0) pthread_cond_wait(&p->done_cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

void eqd_pool_destroy(eqd_pool* p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->shutdown = 1;
  pthread_cond_broadcast(&p->start_cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nthreads - 1; ++i) pthread_join(p->workers[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->start_cv);
  pthread_cond_destroy(&p->done_cv);
  free(p->workers);
  free(p);
}
