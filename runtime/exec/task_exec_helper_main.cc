// Test-only stand-in for `cardnode __task-exec` (see runtime/CMakeLists.txt).
#include "runtime/exec/executor.h"

int main(int argc, char** argv) {
  return cardnode::runtime::task_exec_main(argc, argv);
}
