# `make install` / `cmake --install`: the C++ libraries, their headers, the `ckpt` tool and a CMake
# package, so that another project writes `find_package(ckpt CONFIG REQUIRED)` and links
# `ckpt::ckpt` (the jobs API, the Runtime and the io layer). Headers keep the repository's include
# roots: `#include "runtime/runtime.h"` resolves under <prefix>/include/ckpt.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(CKPT_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/ckpt)
set(CKPT_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR}/ckpt)

# One name for users: ckpt::ckpt is everything a training program links.
add_library(ckpt INTERFACE)
target_link_libraries(ckpt INTERFACE ckpt_jobs)

foreach(lib ckpt_io ckpt_runtime ckpt_jobs)
  target_include_directories(${lib} INTERFACE $<INSTALL_INTERFACE:${CKPT_INSTALL_INCLUDEDIR}>)
endforeach()

install(TARGETS ckpt ckpt_io ckpt_runtime ckpt_jobs EXPORT ckptTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
# The MPI communicator (runtime/mpi_communicator.h), when built: ckpt::ckpt_mpi, linked by
# multi-process programs in addition to ckpt::ckpt; the package then finds MPI for them.
if(CKPT_HAVE_MPI)
  target_include_directories(ckpt_mpi INTERFACE $<INSTALL_INTERFACE:${CKPT_INSTALL_INCLUDEDIR}>)
  install(TARGETS ckpt_mpi EXPORT ckptTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
install(TARGETS ckpt_tool RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
foreach(dir io runtime jobs)
  install(DIRECTORY ${CMAKE_SOURCE_DIR}/${dir}/ DESTINATION ${CKPT_INSTALL_INCLUDEDIR}/${dir}
          FILES_MATCHING PATTERN "*.h")
endforeach()
install(EXPORT ckptTargets NAMESPACE ckpt:: DESTINATION ${CKPT_INSTALL_CMAKEDIR})
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/ckptConfig.cmake.in
  ${CMAKE_BINARY_DIR}/ckptConfig.cmake INSTALL_DESTINATION ${CKPT_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/ckptConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/ckptConfig.cmake ${CMAKE_BINARY_DIR}/ckptConfigVersion.cmake
        DESTINATION ${CKPT_INSTALL_CMAKEDIR})
