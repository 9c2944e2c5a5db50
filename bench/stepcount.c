/* Count the user-space instructions a running process executes for a while,
   by single-stepping it.

       stepcount PID SECONDS

   Attaches to PID (PTRACE_SEIZE) and stops it, says "stopped" on stdout and
   waits for a line on stdin; then runs it one PTRACE_SINGLESTEP per instruction
   for SECONDS, stops it again, says "stopped N" (N instructions) and detaches
   at the next line on stdin. So the caller reads its operation counters while
   the process is stopped. Only that thread is followed. bench/instructions.py
   uses it for pasta, which valgrind cannot run (it refuses pasta's
   clone(CLONE_VM | CLONE_VFORK | CLONE_FILES)). Kernel work is not counted; a
   rep-prefixed string instruction counts once per iteration, as callgrind
   counts it. Each step costs a trap and two context switches: 15,000 to 40,000
   instructions a second on this virtual machine. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	unsigned long long steps = 0;
	int status, sig = 0, alive = 1;
	char line[16];
	double end = 0;
	pid_t pid;

	if (argc != 3) {
		fprintf(stderr, "usage: stepcount PID SECONDS\n");
		return 2;
	}
	pid = atoi(argv[1]);
	if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) || ptrace(PTRACE_INTERRUPT, pid, NULL, NULL)) {
		perror("stepcount: attach");
		return 1;
	}
	for (;;) {
		if (waitpid(pid, &status, __WALL) < 0) {
			perror("stepcount: waitpid");
			return 1;
		}
		if (WIFEXITED(status) || WIFSIGNALED(status)) {
			alive = 0;
			break;
		}
		sig = 0;
		if ((status >> 8) == SIGTRAP)
			steps++; /* a single step done */
		else if ((status >> 16) == 0)
			sig = WSTOPSIG(status); /* a signal for the process: deliver it */
		if (end == 0) { /* the first stop: the caller reads its counters */
			printf("stopped\n");
			fflush(stdout);
			if (!fgets(line, sizeof(line), stdin))
				return 1;
			end = now() + atof(argv[2]);
		}
		if (!(steps & 1023) && now() >= end)
			break;
		ptrace(PTRACE_SINGLESTEP, pid, NULL, (void *)(long)sig);
	}
	printf("stopped %llu\n", steps);
	fflush(stdout);
	if (alive && fgets(line, sizeof(line), stdin))
		ptrace(PTRACE_DETACH, pid, NULL, (void *)(long)sig);
	return 0;
}
