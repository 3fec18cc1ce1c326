/*
 * The baseline of benchmarks/dma_map_bench.py: VFIO_IOMMU_MAP_DMA + VFIO_IOMMU_UNMAP_DMA of
 * one range in a tight C loop, so the Python library's cost can be measured against the
 * ioctls alone. Built on the DUT with gcc and loaded through cffi in ABI mode.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/vfio.h>

/* Map and unmap [iova, iova+size) -> vaddr `iterations` times on `container_fd`.
 * Returns the number of pairs done, or -errno of the first failing ioctl. */
long dma_map_unmap_loop(int container_fd, uint64_t vaddr, uint64_t iova, uint64_t size,
                        long iterations)
{
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = vaddr,
		.iova = iova,
		.size = size,
	};
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap),
		.iova = iova,
		.size = size,
	};
	long i;

	for (i = 0; i < iterations; i++) {
		if (ioctl(container_fd, VFIO_IOMMU_MAP_DMA, &map))
			return -errno;
		unmap.size = size;
		if (ioctl(container_fd, VFIO_IOMMU_UNMAP_DMA, &unmap))
			return -errno;
	}
	return i;
}
