# `cmake --install build --prefix P` installs the static library, its public headers and the CLI,
# a CMake package (find_package(mixtrain) -> mixtrain::mixtrain, mixtrain::cli) and a pkg-config
# file (mixtrain.pc). scripts/check-install.sh builds programs against such an install.
include(CMakePackageConfigHelpers)

set(MIXTRAIN_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/mixtrain)
if(NOT MIXTRAIN_LIBRARY_HAS_CUDA)  # set by src/CMakeLists.txt when the CUDA backend is compiled in
  set(MIXTRAIN_LIBRARY_HAS_CUDA OFF)
endif()

set(mixtrain_install_targets mixtrain)
if(TARGET mixtrain_cli)
  list(APPEND mixtrain_install_targets mixtrain_cli)
endif()
install(TARGETS ${mixtrain_install_targets} EXPORT mixtrainTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/mixtrain DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT mixtrainTargets NAMESPACE mixtrain:: DESTINATION ${MIXTRAIN_INSTALL_CMAKEDIR})

# mixtrainConfig.cmake finds the libraries libmixtrain.a needs at link time; it records the
# OpenBLAS file this build linked (OPENBLAS_LIBRARY) and where cuDNN was found.
if(MIXTRAIN_LIBRARY_HAS_CUDA)
  get_filename_component(MIXTRAIN_CUDNN_LIBRARY_DIR "${CUDNN_LIBRARY}" DIRECTORY)
endif()
configure_package_config_file(cmake/mixtrainConfig.cmake.in
  ${PROJECT_BINARY_DIR}/mixtrainConfig.cmake
  INSTALL_DESTINATION ${MIXTRAIN_INSTALL_CMAKEDIR})
# Version 0.x: while the major version is 0 a minor release may change the API, so a request for
# 0.1 accepts 0.1.* only (SameMinorVersion). From 1.0 on, SameMajorVersion is the rule to use.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mixtrainConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mixtrainConfig.cmake
  ${PROJECT_BINARY_DIR}/mixtrainConfigVersion.cmake
  DESTINATION ${MIXTRAIN_INSTALL_CMAKEDIR})

# mixtrain.pc: paths relative to the .pc file's folder (${pcfiledir}), so that the file is right
# wherever `cmake --install --prefix` puts it. The private libraries are the files this build
# linked, by full path, with a run path: the OpenMP OpenBLAS is not what -lopenblas finds on
# Debian, and its libopenblas.so.0 alternative points to the pthreads build by default.
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
    set(MIXTRAIN_PC_${dir} "${CMAKE_INSTALL_${dir}}")
  else()
    set(MIXTRAIN_PC_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
  endif()
endforeach()
file(RELATIVE_PATH MIXTRAIN_PC_PREFIX "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
string(REGEX REPLACE "/$" "" MIXTRAIN_PC_PREFIX "${MIXTRAIN_PC_PREFIX}")
set(MIXTRAIN_PC_CFLAGS "-march=x86-64-v3")  # as the target's PUBLIC compile options
set(mixtrain_pc_libs "${OPENBLAS_LIBRARY}")
if(MIXTRAIN_LIBRARY_HAS_CUDA)
  string(APPEND MIXTRAIN_PC_CFLAGS " -DMIXTRAIN_WITH_CUDA=1")
  foreach(lib CUDA::cudart CUDA::cublasLt)
    get_target_property(location ${lib} IMPORTED_LOCATION)
    list(APPEND mixtrain_pc_libs "${location}")
  endforeach()
  list(APPEND mixtrain_pc_libs "${CUDNN_LIBRARY}")
endif()
set(MIXTRAIN_PC_LIBS_PRIVATE "")
set(mixtrain_pc_rpath_dirs "")
foreach(lib ${mixtrain_pc_libs})
  string(APPEND MIXTRAIN_PC_LIBS_PRIVATE "${lib} ")
  get_filename_component(dir "${lib}" DIRECTORY)
  list(APPEND mixtrain_pc_rpath_dirs "${dir}")
endforeach()
list(REMOVE_DUPLICATES mixtrain_pc_rpath_dirs)
foreach(dir ${mixtrain_pc_rpath_dirs})
  string(APPEND MIXTRAIN_PC_LIBS_PRIVATE "-Wl,-rpath,${dir} ")
endforeach()
string(APPEND MIXTRAIN_PC_LIBS_PRIVATE "${OpenMP_CXX_FLAGS}")
configure_file(cmake/mixtrain.pc.in ${PROJECT_BINARY_DIR}/mixtrain.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/mixtrain.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
