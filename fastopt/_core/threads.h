/* fastopt's parallel region, in C: run a job's chunks on a thread team.
 *
 * fo_run_chunks(fn, ctx, n) calls fn(ctx, c, n) for every chunk c in [0, n), with one OpenMP
 * thread per chunk (a smaller team takes them round-robin); without OpenMP, on the calling thread.
 * Written in C rather than as a Cython parallel block so that the region carries no exception
 * handling (it has nothing to raise) and the thread index needs no firstprivate copy.
 */
#ifndef FASTOPT_THREADS_H
#define FASTOPT_THREADS_H

#include <Python.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*fo_chunk_fn)(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks);

static int fo_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int fo_omp_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void fo_run_chunks(fo_chunk_fn fn, void* ctx, Py_ssize_t n_chunks) {
#ifdef _OPENMP
    if (n_chunks > 1) {
        #pragma omp parallel num_threads((int)n_chunks)
        {
            Py_ssize_t team = omp_get_num_threads();
            for (Py_ssize_t c = omp_get_thread_num(); c < n_chunks; c += team)
                fn(ctx, c, n_chunks);
        }
        return;
    }
#endif
    for (Py_ssize_t c = 0; c < n_chunks; c++)
        fn(ctx, c, n_chunks);
}

#endif /* FASTOPT_THREADS_H */
