/* Shadows <threads.h> while librdkafka is configured for the portable build.
 *
 * librdkafka's configure uses C11 threads (thrd_create, mtx_lock, ...) when <threads.h>
 * compiles; glibc has them only since 2.28, so a binary built with them cannot start on
 * CentOS 7 (glibc 2.17). With this header first on the include path that check fails
 * and librdkafka uses its bundled tinycthread (on pthreads) instead. Nothing else of
 * the build includes <threads.h>. See scripts/build-portable.sh. */
#error "C11 threads are not used by the portable build (glibc 2.17 has none)"
