/* bench/login_inproc.py --instructions: valgrind runs the benchmark with --collect-atstart=no; collection is
 * turned on just before each request of a measured login enters the app and off when it leaves, and a dump
 * labelled with the step follows. So only the broker's own work is counted (not the WSGI test client, not the
 * benchmark's SAML signer, not the setup), and each dump file holds one request's counts.
 * Built on demand with: cc -O2 -shared -fPIC (valgrind's headers: Debian package valgrind). Outside valgrind
 * the macros are a few no-op instructions. */
#include <valgrind/callgrind.h>

void bench_toggle_collect(void) { CALLGRIND_TOGGLE_COLLECT; }

void bench_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
