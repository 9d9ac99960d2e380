// GCC 13 emits calls to std::ios_base_library_init() for <iostream>; older libstdc++ (Debian 12) lacks it.
// The real libstdc++ initialises iostreams itself, so an empty definition is enough.
namespace std { void ios_base_library_init() {} }
