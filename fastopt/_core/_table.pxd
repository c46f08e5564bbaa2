from fastopt._core._kernel_api cimport KernelTable

cdef const KernelTable* kernel_table() noexcept nogil
# The kernel module whose table kernel_table() is (None before use()).
cdef object kernel_module()
