/*
 * The floor under /init -> /app/run: a PID 1 that does only the kernel work appliance-init
 * does before it starts /app/run (the same mounts with the same options, the loopback
 * interface up, /proc/cmdline read) and nothing else, so that tests/bench/floor.sh can say
 * how much of that window is the kernel's and how much the init's.
 *
 * Written in C, not Rust, on purpose: it must put as little code of its own as possible
 * between the system calls it times, and libc's static start-up runs before the first
 * timestamp. It is a measuring probe, never part of an appliance.
 *
 * The kernel passes the unknown command-line word `floor=STEPS` (comma-separated: mounts,
 * lo, cmdline; empty for none) to PID 1 as an environment variable, which costs no system
 * call to read. After the steps it writes the status record's `init`, `phase_start` (run)
 * and `end` events to the second serial port, as appliance-init would, and powers off.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static long long t_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_BOOTTIME, &t);
	return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static int has_step(const char *steps, const char *step)
{
	size_t n = strlen(step);
	for (const char *p = steps; (p = strstr(p, step)); p += n)
		if ((p == steps || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
			return 1;
	return 0;
}

/* appliance-init's table (init/src/mount.rs), in its order and with its options. */
static void mounts(void)
{
	const unsigned long nsnd = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	mount("proc", "/proc", "proc", nsnd, "");
	mount("sysfs", "/sys", "sysfs", nsnd, "");
	mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mkdir("/dev/pts", 0755);
	mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
	mkdir("/dev/shm", 01777);
	mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mkdir("/run", 0755);
	mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	mkdir("/tmp", 01777);
	mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
}

static void loopback_up(void)
{
	struct ifreq r;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memset(&r, 0, sizeof r);
	strcpy(r.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &r) == 0) {
		r.ifr_flags |= IFF_UP;
		ioctl(s, SIOCSIFFLAGS, &r);
	}
	close(s);
}

static void read_cmdline(void)
{
	char buf[4096];
	int f = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (f >= 0) {
		if (read(f, buf, sizeof buf) < 0)
			buf[0] = '\0';
		close(f);
	}
}

int main(void)
{
	long long t_init = t_us();
	const char *steps = getenv("floor");
	if (!steps)
		steps = "";
	if (has_step(steps, "mounts"))
		mounts();
	if (has_step(steps, "lo"))
		loopback_up();
	if (has_step(steps, "cmdline"))
		read_cmdline();
	long long t_run = t_us();

	/* Not timed: what the record needs. */
	if (!has_step(steps, "mounts")) {
		mkdir("/dev", 0755);
		mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	}
	char record[512];
	int n = snprintf(record, sizeof record,
			 "{\"event\":\"init\",\"t_us\":%lld,\"version\":\"floor\",\"v\":1}\n"
			 "{\"event\":\"phase_start\",\"t_us\":%lld,\"phase\":\"run\"}\n"
			 "{\"event\":\"phase_end\",\"t_us\":%lld,\"phase\":\"run\",\"exit\":{\"code\":0},\"status\":0}\n"
			 "{\"event\":\"end\",\"t_us\":%lld,\"action\":\"poweroff\",\"status\":0}\n",
			 t_init, t_run, t_run, t_run);
	int port = open("/dev/ttyS1", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (port < 0 || write(port, record, n) != n)
		fprintf(stderr, "floor: cannot write the status record to /dev/ttyS1\n");
	/* The UART's transmit buffer drains before the power goes. */
	if (port >= 0)
		tcdrain(port);
	sync();
	reboot(RB_POWER_OFF);
	return 1;
}
