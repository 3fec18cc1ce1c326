/*
 * vfio-hil's compiled hot path: the loops whose cost per operation must not include the
 * interpreter. Python sets everything up through the library (the device, its queues, the
 * DMA mappings, the eventfds) and hands this code plain addresses and fds; the loops run,
 * time every operation and return counters and a latency histogram.
 *
 * Clock: clock_gettime(CLOCK_MONOTONIC) (the vDSO, no system call) for latencies and
 * elapsed time; CLOCK_THREAD_CPUTIME_ID for the CPU time the loop's thread used.
 *
 * The histogram is log-linear, as fio's: values below 128 ns have a bucket each; above,
 * every power of two is split into 64 buckets, so a bucket is at most 1/64 of its values
 * wide (a percentile read from it is within 1.6 %). vfio_hil.core.perf.histogram mirrors the
 * bucket arithmetic in Python; a unit test holds the two together.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/vfio.h>

#define VH_HIST_BITS 6
#define VH_HIST_VAL (1u << VH_HIST_BITS)
#define VH_HIST_GROUPS 29
#define VH_HIST_BUCKETS (VH_HIST_GROUPS * VH_HIST_VAL)

struct vh_hist {
	uint64_t count;
	uint64_t sum_ns;
	uint64_t min_ns;
	uint64_t max_ns;
	uint64_t buckets[VH_HIST_BUCKETS];
};

struct vh_nvme_queue {
	uint64_t sq;             /* submission queue entries (mapped for DMA) */
	uint64_t cq;             /* completion queue entries */
	uint64_t sq_doorbell;    /* address of the SQ tail doorbell in the mmap'ed BAR0 */
	uint64_t cq_doorbell;    /* address of the CQ head doorbell */
	uint64_t prp_lists;      /* one 4 KiB PRP list page per slot */
	uint64_t prp_lists_iova;
	uint32_t depth;
	uint32_t tail;           /* in and out: the queue's state, as the Python side keeps it */
	uint32_t head;
	uint32_t phase;
};

struct vh_nvme_job {
	uint32_t opcode;
	uint32_t nsid;
	uint32_t block_size;
	uint32_t io_bytes;       /* a multiple of block_size, at most 512 pages */
	uint64_t blocks;         /* the namespace's size in blocks */
	uint32_t queue_depth;    /* commands kept in flight, below the queue's depth */
	uint32_t sequential;     /* 0: uniformly random offsets aligned to io_bytes */
	uint64_t data_iova;      /* queue_depth slots of io_bytes rounded up to pages */
	uint64_t warmup_ns;
	uint64_t run_ns;
	uint64_t timeout_ns;     /* no completion for this long: give up with -ETIMEDOUT */
	uint64_t seed;
	int32_t eventfd;         /* -1: poll the CQ; else sleep on this fd before reaping */
};

struct vh_io_result {
	int32_t status;          /* 0, -ETIMEDOUT, or -errno of a failed system call */
	uint32_t first_error;    /* the first completion status that was not success */
	uint64_t ios;
	uint64_t bytes;
	uint64_t errors;
	uint64_t elapsed_ns;
	uint64_t cpu_ns;
	struct vh_hist lat;
};

struct vh_loop_result {
	int32_t status;          /* 0, or -errno of the first failing call */
	uint64_t ops;
	uint64_t elapsed_ns;
	uint64_t cpu_ns;
	struct vh_hist lat;
};

static inline uint64_t vh_clock(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t vh_now(void)
{
	return vh_clock(CLOCK_MONOTONIC);
}

unsigned int vh_hist_index(uint64_t ns)
{
	unsigned int msb, shift, index;

	if (ns < 2 * VH_HIST_VAL)
		return (unsigned int)ns;
	msb = 63 - (unsigned int)__builtin_clzll(ns);
	shift = msb - VH_HIST_BITS;
	index = ((shift + 1) << VH_HIST_BITS) + (unsigned int)((ns >> shift) & (VH_HIST_VAL - 1));
	return index < VH_HIST_BUCKETS ? index : VH_HIST_BUCKETS - 1;
}

void vh_hist_reset(struct vh_hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min_ns = UINT64_MAX;
}

void vh_hist_add(struct vh_hist *h, uint64_t ns)
{
	h->buckets[vh_hist_index(ns)]++;
	h->count++;
	h->sum_ns += ns;
	if (ns < h->min_ns)
		h->min_ns = ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

/* Start a timed loop: its result zeroed, the thread's CPU clock and the wall clock read. */
static void vh_loop_begin(struct vh_loop_result *r, uint64_t *cpu0, uint64_t *start)
{
	memset(r, 0, sizeof(*r));
	vh_hist_reset(&r->lat);
	*cpu0 = vh_clock(CLOCK_THREAD_CPUTIME_ID);
	*start = vh_now();
}

/* End a timed loop: its elapsed and CPU time; returns its status. */
static int vh_loop_end(struct vh_loop_result *r, uint64_t cpu0, uint64_t start)
{
	r->elapsed_ns = vh_now() - start;
	r->cpu_ns = vh_clock(CLOCK_THREAD_CPUTIME_ID) - cpu0;
	return r->status;
}

/* ---- NVMe I/O -------------------------------------------------------------------------- */

#define VH_PAGE 4096u
#define VH_SQE 64u
#define VH_CQE 16u
#define VH_MAX_QD 1024u

static inline void vh_mmio_write32(uint64_t addr, uint32_t value)
{
	__atomic_store_n((volatile uint32_t *)addr, value, __ATOMIC_RELEASE);
}

static inline uint64_t vh_xorshift(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

static uint64_t vh_next_lba(const struct vh_nvme_job *job, uint64_t *state, uint64_t *cursor)
{
	uint64_t per_io = job->io_bytes / job->block_size;
	uint64_t slots = job->blocks / per_io;
	uint64_t slot;

	if (job->sequential) {
		slot = (*cursor)++ % slots;
	} else {
		slot = vh_xorshift(state) % slots;
	}
	return slot * per_io;
}

static uint64_t vh_slot_iova(const struct vh_nvme_job *job, uint32_t tag)
{
	uint64_t stride = ((uint64_t)job->io_bytes + VH_PAGE - 1) / VH_PAGE * VH_PAGE;

	return job->data_iova + stride * tag;
}

/* The PRP list of every slot holds the pages after the slot's first, written once. */
static void vh_fill_prp_lists(struct vh_nvme_queue *q, const struct vh_nvme_job *job)
{
	uint32_t pages = (job->io_bytes + VH_PAGE - 1) / VH_PAGE;
	uint32_t tag, i;

	if (pages <= 2)
		return;
	for (tag = 0; tag < job->queue_depth; tag++) {
		uint64_t *list = (uint64_t *)(q->prp_lists + (uint64_t)tag * VH_PAGE);

		for (i = 1; i < pages; i++)
			list[i - 1] = vh_slot_iova(job, tag) + (uint64_t)i * VH_PAGE;
	}
}

static void vh_submit(struct vh_nvme_queue *q, const struct vh_nvme_job *job, uint32_t tag,
		      uint64_t lba)
{
	uint32_t *sqe = (uint32_t *)(q->sq + (uint64_t)q->tail * VH_SQE);
	uint64_t iova = vh_slot_iova(job, tag);
	uint32_t pages = (job->io_bytes + VH_PAGE - 1) / VH_PAGE;
	uint64_t prp2 = 0;

	if (pages == 2)
		prp2 = iova + VH_PAGE;
	else if (pages > 2)
		prp2 = q->prp_lists_iova + (uint64_t)tag * VH_PAGE;
	memset(sqe, 0, VH_SQE);
	sqe[0] = job->opcode | tag << 16;
	sqe[1] = job->nsid;
	sqe[6] = (uint32_t)iova;
	sqe[7] = (uint32_t)(iova >> 32);
	sqe[8] = (uint32_t)prp2;
	sqe[9] = (uint32_t)(prp2 >> 32);
	sqe[10] = (uint32_t)lba;
	sqe[11] = (uint32_t)(lba >> 32);
	sqe[12] = job->io_bytes / job->block_size - 1;
	q->tail = (q->tail + 1) % q->depth;
}

/* Block until the eventfd fires or `timeout_ns` passes; 0, -ETIMEDOUT or -errno. */
static int vh_wait_eventfd(int fd, uint64_t timeout_ns)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	uint64_t count;
	int ret;

	ret = poll(&pfd, 1, (int)(timeout_ns / 1000000 + 1));
	if (ret < 0)
		return errno == EINTR ? 0 : -errno;
	if (ret == 0)
		return -ETIMEDOUT;
	if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

/*
 * Keep `queue_depth` commands in flight for warmup_ns + run_ns; count and time the
 * completions of the run part only (submission to the completion seen by this loop).
 * Commands still in flight at the end are reaped and not counted.
 */
int vh_nvme_io(struct vh_nvme_queue *q, const struct vh_nvme_job *job, struct vh_io_result *r)
{
	uint64_t submitted_at[VH_MAX_QD];
	uint64_t rng = job->seed | 1, cursor = 0;
	uint64_t cpu0, start, measure_from, end, last_progress, now;
	uint32_t tag, in_flight = 0;
	int measuring = 0, ret;

	memset(r, 0, sizeof(*r));
	vh_hist_reset(&r->lat);
	if (job->queue_depth == 0 || job->queue_depth >= q->depth || job->queue_depth > VH_MAX_QD ||
	    job->io_bytes == 0 || job->io_bytes % job->block_size ||
	    job->blocks < job->io_bytes / job->block_size) {
		r->status = -EINVAL;
		return r->status;
	}
	vh_fill_prp_lists(q, job);
	cpu0 = vh_clock(CLOCK_THREAD_CPUTIME_ID);
	start = vh_now();
	measure_from = start + job->warmup_ns;
	end = measure_from + job->run_ns;
	for (tag = 0; tag < job->queue_depth; tag++) {
		vh_submit(q, job, tag, vh_next_lba(job, &rng, &cursor));
		submitted_at[tag] = vh_now();
		in_flight++;
	}
	vh_mmio_write32(q->sq_doorbell, q->tail);
	last_progress = vh_now();
	while (in_flight) {
		volatile uint32_t *cqe = (volatile uint32_t *)(q->cq + (uint64_t)q->head * VH_CQE);
		uint32_t dw3 = cqe[3];
		int reaped = 0, resubmitted = 0;

		while (((dw3 >> 16) & 1) == q->phase) {
			uint32_t status = (dw3 >> 17) & 0x7fff;

			__atomic_thread_fence(__ATOMIC_ACQUIRE);
			tag = dw3 & 0xffff;
			now = vh_now();
			if (!measuring && now >= measure_from) {
				/* The warm-up ends: what completes from now on is measured. */
				measuring = 1;
				cpu0 = vh_clock(CLOCK_THREAD_CPUTIME_ID);
				measure_from = now;
				end = now + job->run_ns;
			}
			if (tag < job->queue_depth && measuring && now < end) {
				vh_hist_add(&r->lat, now - submitted_at[tag]);
				r->ios++;
				r->bytes += job->io_bytes;
				if (status) {
					if (!r->errors)
						r->first_error = status;
					r->errors++;
				}
			}
			in_flight--;
			reaped++;
			if (++q->head == q->depth) {
				q->head = 0;
				q->phase ^= 1;
			}
			if (tag < job->queue_depth && now < end) {
				vh_submit(q, job, tag, vh_next_lba(job, &rng, &cursor));
				submitted_at[tag] = vh_now();
				in_flight++;
				resubmitted++;
			}
			cqe = (volatile uint32_t *)(q->cq + (uint64_t)q->head * VH_CQE);
			dw3 = cqe[3];
		}
		now = vh_now();
		if (reaped) {
			vh_mmio_write32(q->cq_doorbell, q->head);
			if (resubmitted)
				vh_mmio_write32(q->sq_doorbell, q->tail);
			last_progress = now;
			continue;
		}
		if (now - last_progress > job->timeout_ns) {
			r->status = -ETIMEDOUT;
			break;
		}
		if (job->eventfd >= 0) {
			ret = vh_wait_eventfd(job->eventfd, job->timeout_ns);
			if (ret && ret != -ETIMEDOUT) {
				r->status = ret;
				break;
			}
		}
	}
	now = vh_now();
	r->elapsed_ns = (measuring ? now < end ? now : end : now) - measure_from;
	r->cpu_ns = vh_clock(CLOCK_THREAD_CPUTIME_ID) - cpu0;
	return r->status;
}

/*
 * Interrupt delivery: one command at a time; for each, the time from its completion entry
 * appearing in the CQ (polled) to its MSI/MSI-X reaching the eventfd (polled too). The
 * device writes the entry, then signals; the histogram is that signal's way through the
 * IOMMU's interrupt remapping, the host's interrupt handler and vfio-pci to userspace.
 */
int vh_nvme_irq_delivery(struct vh_nvme_queue *q, const struct vh_nvme_job *job, uint64_t count,
			 struct vh_loop_result *r)
{
	uint64_t rng = job->seed | 1, cursor = 0, i, seen, fired, deadline, value, cpu0, start;

	vh_loop_begin(r, &cpu0, &start);
	if (job->eventfd < 0 || job->queue_depth != 1 || job->io_bytes % job->block_size) {
		r->status = -EINVAL;
		return r->status;
	}
	while (read(job->eventfd, &value, sizeof(value)) == sizeof(value))
		; /* a stale signal would be counted as this command's */
	for (i = 0; i < count; i++) {
		volatile uint32_t *cqe = (volatile uint32_t *)(q->cq + (uint64_t)q->head * VH_CQE);

		vh_submit(q, job, 0, vh_next_lba(job, &rng, &cursor));
		vh_mmio_write32(q->sq_doorbell, q->tail);
		deadline = vh_now() + job->timeout_ns;
		while (((cqe[3] >> 16) & 1) != q->phase) {
			if (vh_now() > deadline) {
				r->status = -ETIMEDOUT;
				goto out;
			}
		}
		seen = vh_now();
		for (;;) {
			if (read(job->eventfd, &value, sizeof(value)) == sizeof(value))
				break;
			if (errno != EAGAIN) {
				r->status = -errno;
				goto out;
			}
			if (vh_now() > deadline) {
				r->status = -ETIMEDOUT;
				goto out;
			}
		}
		fired = vh_now();
		vh_hist_add(&r->lat, fired - seen);
		r->ops++;
		if (++q->head == q->depth) {
			q->head = 0;
			q->phase ^= 1;
		}
		vh_mmio_write32(q->cq_doorbell, q->head);
	}
out:
	return vh_loop_end(r, cpu0, start);
}

/* ---- MMIO and DMA mapping -------------------------------------------------------------- */

/* `count` 32-bit reads of the mmap'ed register at `addr`, each timed. */
int vh_mmio_read_loop(uint64_t addr, uint64_t count, struct vh_loop_result *r)
{
	volatile uint32_t *reg = (volatile uint32_t *)addr;
	uint64_t i, t0, cpu0, start;
	uint32_t sink = 0;

	vh_loop_begin(r, &cpu0, &start);
	for (i = 0; i < count; i++) {
		t0 = vh_now();
		sink ^= *reg;
		vh_hist_add(&r->lat, vh_now() - t0);
	}
	r->ops = count;
	(void)sink;
	return vh_loop_end(r, cpu0, start);
}

/* `count` 32-bit writes of `value` to the mmap'ed register at `addr`, each timed. */
int vh_mmio_write_loop(uint64_t addr, uint32_t value, uint64_t count, struct vh_loop_result *r)
{
	uint64_t i, t0, cpu0, start;

	vh_loop_begin(r, &cpu0, &start);
	for (i = 0; i < count; i++) {
		t0 = vh_now();
		vh_mmio_write32(addr, value);
		vh_hist_add(&r->lat, vh_now() - t0);
	}
	r->ops = count;
	return vh_loop_end(r, cpu0, start);
}

/* `count` 4-byte preads (write: pwrites of `value`) at `offset` of the device fd. */
int vh_pio_loop(int fd, uint64_t offset, int write, uint32_t value, uint64_t count,
		struct vh_loop_result *r)
{
	uint64_t i, t0, cpu0, start;
	uint32_t word = value;
	ssize_t done;

	vh_loop_begin(r, &cpu0, &start);
	for (i = 0; i < count; i++) {
		t0 = vh_now();
		done = write ? pwrite(fd, &word, 4, (off_t)offset) : pread(fd, &word, 4, (off_t)offset);
		if (done != 4) {
			r->status = done < 0 ? -errno : -EIO;
			break;
		}
		vh_hist_add(&r->lat, vh_now() - t0);
		r->ops++;
	}
	return vh_loop_end(r, cpu0, start);
}

/*
 * VFIO_IOMMU_MAP_DMA then VFIO_IOMMU_UNMAP_DMA of [iova, iova + size) -> vaddr on a type1
 * container, `max_ops` times or for `run_ns`, whichever ends first; each pair timed.
 */
int vh_map_unmap_loop(int container_fd, uint64_t vaddr, uint64_t iova, uint64_t size,
		      uint64_t max_ops, uint64_t run_ns, struct vh_loop_result *r)
{
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = vaddr,
		.iova = iova,
		.size = size,
	};
	struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = iova };
	uint64_t t0, t1, cpu0, start, end;

	vh_loop_begin(r, &cpu0, &start);
	end = run_ns > UINT64_MAX - start ? UINT64_MAX : start + run_ns;
	do {
		t0 = vh_now();
		if (ioctl(container_fd, VFIO_IOMMU_MAP_DMA, &map)) {
			r->status = -errno;
			break;
		}
		unmap.size = size;
		if (ioctl(container_fd, VFIO_IOMMU_UNMAP_DMA, &unmap)) {
			r->status = -errno;
			break;
		}
		t1 = vh_now();
		vh_hist_add(&r->lat, t1 - t0);
		r->ops++;
	} while (t1 < end && r->ops < max_ops);
	return vh_loop_end(r, cpu0, start);
}
