# Every dependency comes from a Debian package installed by scripts/setup.sh.
find_package(OpenMP REQUIRED)
find_package(ZLIB REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(fmt REQUIRED)
find_package(CLI11 CONFIG QUIET)
if(NOT CLI11_FOUND)
  find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp REQUIRED)
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  target_include_directories(CLI11::CLI11 INTERFACE ${CLI11_INCLUDE_DIR})
endif()

# OpenBLAS: the CBLAS interface of Debian's libopenblas-dev. The OpenMP build
# (libopenblas0-openmp) is preferred: it shares one thread pool with our OpenMP kernels, where
# the pthreads build and OpenMP would fight over the cores.
find_path(OPENBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas REQUIRED)
# The installed mixtrainConfig.cmake searches the same folders (cmake/mixtrainConfig.cmake.in).
set(MIXTRAIN_OPENBLAS_OPENMP_DIRS
  /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/aarch64-linux-gnu/openblas-openmp)
find_library(OPENBLAS_LIBRARY NAMES openblas libopenblas.so.0
  PATHS ${MIXTRAIN_OPENBLAS_OPENMP_DIRS}
  NO_DEFAULT_PATH)
if(NOT OPENBLAS_LIBRARY)
  find_library(OPENBLAS_LIBRARY NAMES openblas REQUIRED)
  message(WARNING "mixtrain: no OpenMP OpenBLAS (Debian: libopenblas0-openmp) in "
    "${MIXTRAIN_OPENBLAS_OPENMP_DIRS}; using ${OPENBLAS_LIBRARY}, which may be the pthreads "
    "build (training about 4x slower; the installed mixtrainConfig.cmake refuses that one)")
endif()
message(STATUS "mixtrain: OpenBLAS ${OPENBLAS_LIBRARY}")
add_library(mixtrain_openblas INTERFACE)
target_include_directories(mixtrain_openblas INTERFACE ${OPENBLAS_INCLUDE_DIR})
target_link_libraries(mixtrain_openblas INTERFACE ${OPENBLAS_LIBRARY})

# CUDA backend: cuBLASLt and (for later layers) cuDNN and NCCL from the toolkit.
set(MIXTRAIN_HAVE_CUDA OFF)
if(NOT MIXTRAIN_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # cuDNN (convolutions) ships beside the toolkit here; Debian's nvidia-cudnn installs it under
    # the multiarch folders.
    find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
    if(CUDNN_INCLUDE_DIR AND CUDNN_LIBRARY)
      add_library(mixtrain_cudnn INTERFACE)
      target_include_directories(mixtrain_cudnn INTERFACE ${CUDNN_INCLUDE_DIR})
      target_link_libraries(mixtrain_cudnn INTERFACE ${CUDNN_LIBRARY})
      set(MIXTRAIN_HAVE_CUDA ON)
    elseif(MIXTRAIN_CUDA STREQUAL "ON")
      message(FATAL_ERROR "MIXTRAIN_CUDA=ON but cuDNN (cudnn.h, libcudnn) was not found")
    else()
      message(STATUS "mixtrain: a CUDA compiler but no cuDNN: building without the CUDA backend")
    endif()
  elseif(MIXTRAIN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MIXTRAIN_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "mixtrain: CUDA backend ${MIXTRAIN_HAVE_CUDA}")
