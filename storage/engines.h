// Private to storage/: the two IoEngine backends, chosen by IoEngine::create().
#pragma once

#include <memory>

#include "proto/error.h"
#include "storage/io_engine.h"

namespace cardnode::storage {

// Fails with the errno of io_uring_queue_init (ENOSYS under qemu-user, EPERM under
// seccomp) or of the eventfd setup.
[[nodiscard]] Result<std::unique_ptr<IoEngine>> make_uring_engine(const IoOptions& options);
[[nodiscard]] Result<std::unique_ptr<IoEngine>> make_fallback_engine(const IoOptions& options);

}  // namespace cardnode::storage
