# Shared part of toolchain-aarch64.cmake and toolchain-armhf.cmake; expects
# CMAKE_SYSTEM_PROCESSOR, CARDNODE_CROSS_TRIPLET and CARDNODE_CROSS_QEMU.
#
# Compilers are Debian's cross gcc 12 (crossbuild-essential-*); headers and
# libraries come from a Debian 12 sysroot of the target architecture; protoc runs on
# the build host; test binaries run under qemu-user with the sysroot as their root.
#
# This file is read again for every try_compile, where cache variables are not
# visible: the sysroot is therefore also handed over through the environment.

# Sysroot: -DCARDNODE_SYSROOT=DIR, else $ENV{CARDNODE_SYSROOT}, else the one
# cross/cross.sh builds in build/sysroot-ARCH of this checkout.
if(NOT CARDNODE_SYSROOT)
  if(DEFINED ENV{CARDNODE_SYSROOT} AND NOT "$ENV{CARDNODE_SYSROOT}" STREQUAL "")
    set(CARDNODE_SYSROOT "$ENV{CARDNODE_SYSROOT}")
  else()
    if(CMAKE_SYSTEM_PROCESSOR STREQUAL "aarch64")
      set(_cardnode_arch aarch64)
    else()
      set(_cardnode_arch armhf)
    endif()
    get_filename_component(CARDNODE_SYSROOT
      "${CMAKE_CURRENT_LIST_DIR}/../build/sysroot-${_cardnode_arch}" ABSOLUTE)
  endif()
endif()
set(CARDNODE_SYSROOT "${CARDNODE_SYSROOT}" CACHE PATH "Target sysroot (cross/sysroot.sh)")
set(ENV{CARDNODE_SYSROOT} "${CARDNODE_SYSROOT}")
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES CARDNODE_SYSROOT)
if(NOT EXISTS "${CARDNODE_SYSROOT}/usr/include/stdio.h")
  message(FATAL_ERROR "CARDNODE_SYSROOT='${CARDNODE_SYSROOT}' is not a ${CARDNODE_CROSS_TRIPLET} "
                      "sysroot; build one with: cross/sysroot.sh ARCH DIR")
endif()

set(_t ${CARDNODE_CROSS_TRIPLET})
set(CMAKE_C_COMPILER ${_t}-gcc)
set(CMAKE_CXX_COMPILER ${_t}-g++)
set(CMAKE_SYSROOT "${CARDNODE_SYSROOT}")
# Debian multiarch: libraries in usr/lib/<triplet>, CMake config files in
# usr/lib/<triplet>/cmake. (CMake usually detects this; stating it keeps find_*
# right even before the compiler has been probed.)
set(CMAKE_LIBRARY_ARCHITECTURE ${_t})

# Everything is searched inside the sysroot only, except programs (protoc, the
# compilers' helpers), which must be the build host's.
set(CMAKE_FIND_ROOT_PATH "${CARDNODE_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# protoc generates code on the host; the sysroot has no runnable protoc, and must
# not be picked even if a package put one there. Same protobuf version (3.21) on
# both sides, so the generated code matches the target's headers and library.
set(Protobuf_PROTOC_EXECUTABLE /usr/bin/protoc CACHE FILEPATH "host protoc")

# pkg-config (FindOpenSSL, FindPkgConfig users) reads the sysroot's .pc files and
# prefixes what they print with the sysroot.
set(ENV{PKG_CONFIG_PATH} "")
set(ENV{PKG_CONFIG_LIBDIR}
    "${CARDNODE_SYSROOT}/usr/lib/${_t}/pkgconfig:${CARDNODE_SYSROOT}/usr/lib/pkgconfig:${CARDNODE_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${CARDNODE_SYSROOT}")

# Sysroot libraries name their own dependencies (DT_NEEDED, e.g. libssl.so -> libcrypto.so
# for the test binaries); ld finds those through -rpath-link, not -L.
set(_rpath_link
    "-Wl,-rpath-link,${CARDNODE_SYSROOT}/usr/lib/${_t} -Wl,-rpath-link,${CARDNODE_SYSROOT}/lib/${_t}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${_rpath_link}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${_rpath_link}")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "${_rpath_link}")

# ctest and gtest_discover_tests (PRE_TEST) run target binaries through qemu-user;
# -L makes the target's dynamic loader and libraries come from the sysroot.
set(CMAKE_CROSSCOMPILING_EMULATOR "${CARDNODE_CROSS_QEMU};-L;${CARDNODE_SYSROOT}")
unset(_t)
unset(_rpath_link)
