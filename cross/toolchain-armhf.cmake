# Cross toolchain: 32-bit ARM hard-float (Raspberry Pi OS 32-bit, older boards), Debian 12.
# size_t, long and pointers are 32 bits here: this build is where narrowing and
# printf-format mistakes around uint64_t show up.
#   cmake -DCMAKE_TOOLCHAIN_FILE=cross/toolchain-armhf.cmake -DCARDNODE_SYSROOT=DIR ...
# DIR comes from cross/sysroot.sh; cross/cross.sh does all of this.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CARDNODE_CROSS_TRIPLET arm-linux-gnueabihf)
set(CARDNODE_CROSS_QEMU qemu-arm)
# (64-bit off_t comes from the top-level CMakeLists: _FILE_OFFSET_BITS=64.)
# -Wno-psabi: GCC notes that std::vector iterators are passed differently than by
# GCC < 7.1; nothing here links against code that old.
set(CMAKE_CXX_FLAGS_INIT "-Wno-psabi")
include(${CMAKE_CURRENT_LIST_DIR}/toolchain-common.cmake)
