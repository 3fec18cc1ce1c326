"""Builds ``vfio_hil.core.perf._hotpath`` from ``hotpath.c`` with cffi's API mode.

Run by setuptools when the package is installed (``setup.py``'s ``cffi_modules``): the
controller compiles, and the module is deployed to DUTs with the rest of the DUT-side code,
so a DUT needs no compiler. :mod:`vfio_hil.core.perf.hotpath` loads it.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "vfio_hil.core.perf._hotpath"

#: What Python sees of hotpath.c: the structures (exactly as declared there) and the loops.
CDEF = """
#define VH_HIST_BUCKETS ...
struct vh_hist {
    uint64_t count; uint64_t sum_ns; uint64_t min_ns; uint64_t max_ns;
    uint64_t buckets[...];
};
struct vh_nvme_queue {
    uint64_t sq; uint64_t cq; uint64_t sq_doorbell; uint64_t cq_doorbell;
    uint64_t prp_lists; uint64_t prp_lists_iova;
    uint32_t depth; uint32_t tail; uint32_t head; uint32_t phase;
};
struct vh_nvme_job {
    uint32_t opcode; uint32_t nsid; uint32_t block_size; uint32_t io_bytes;
    uint64_t blocks; uint32_t queue_depth; uint32_t sequential; uint64_t data_iova;
    uint64_t warmup_ns; uint64_t run_ns; uint64_t timeout_ns; uint64_t seed;
    int32_t eventfd;
};
struct vh_io_result {
    int32_t status; uint32_t first_error;
    uint64_t ios; uint64_t bytes; uint64_t errors; uint64_t elapsed_ns; uint64_t cpu_ns;
    struct vh_hist lat;
};
struct vh_loop_result {
    int32_t status; uint64_t ops; uint64_t elapsed_ns; uint64_t cpu_ns;
    struct vh_hist lat;
};
unsigned int vh_hist_index(uint64_t ns);
void vh_hist_reset(struct vh_hist *h);
void vh_hist_add(struct vh_hist *h, uint64_t ns);
int vh_nvme_io(struct vh_nvme_queue *q, const struct vh_nvme_job *job, struct vh_io_result *r);
int vh_nvme_irq_delivery(struct vh_nvme_queue *q, const struct vh_nvme_job *job,
                         uint64_t count, struct vh_loop_result *r);
int vh_mmio_read_loop(uint64_t addr, uint64_t count, struct vh_loop_result *r);
int vh_mmio_write_loop(uint64_t addr, uint32_t value, uint64_t count,
                       struct vh_loop_result *r);
int vh_pio_loop(int fd, uint64_t offset, int write, uint32_t value, uint64_t count,
                struct vh_loop_result *r);
int vh_map_unmap_loop(int container_fd, uint64_t vaddr, uint64_t iova, uint64_t size,
                      uint64_t max_ops, uint64_t run_ns, struct vh_loop_result *r);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    MODULE,
    (HERE / "hotpath.c").read_text(),
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE), verbose=True)
