# Cross toolchain: 64-bit ARM (Raspberry Pi 3/4/5, Zero 2 W on a 64-bit OS), Debian 12.
#   cmake -DCMAKE_TOOLCHAIN_FILE=cross/toolchain-aarch64.cmake -DCARDNODE_SYSROOT=DIR ...
# DIR comes from cross/sysroot.sh; cross/cross.sh does all of this.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CARDNODE_CROSS_TRIPLET aarch64-linux-gnu)
set(CARDNODE_CROSS_QEMU qemu-aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/toolchain-common.cmake)
