from fastopt._core._kernel_api cimport KernelTable

cdef const KernelTable* kernel_table() noexcept nogil
