// Sets VER_FLG_WEAK on one version requirement (e.g. GLIBCXX_3.4.32) in an ELF64 .gnu.version_r section.
// patchelf can drop a symbol's version but leaves the requirement itself; ld.so refuses a non-weak
// requirement the system library does not provide, and ignores a weak one.
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <vector>
#include <elf.h>

int main(int argc, char** argv) {
    if (argc != 3) { std::fprintf(stderr, "usage: %s <elf-file> <version-name>\n", argv[0]); return 2; }
    FILE* f = std::fopen(argv[1], "r+b");
    if (!f) { std::perror(argv[1]); return 1; }
    std::fseek(f, 0, SEEK_END);
    long size = std::ftell(f);
    std::vector<unsigned char> b(static_cast<size_t>(size));
    std::fseek(f, 0, SEEK_SET);
    if (std::fread(b.data(), 1, b.size(), f) != b.size()) { std::fprintf(stderr, "read failed\n"); return 1; }
    auto* eh = reinterpret_cast<Elf64_Ehdr*>(b.data());
    if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64) {
        std::fprintf(stderr, "%s: not an ELF64 file\n", argv[1]); return 1;
    }
    auto* sh = reinterpret_cast<Elf64_Shdr*>(b.data() + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_GNU_verneed) continue;
        const char* strtab = reinterpret_cast<const char*>(b.data() + sh[sh[i].sh_link].sh_offset);
        size_t off = sh[i].sh_offset;
        for (;;) {
            auto* vn = reinterpret_cast<Elf64_Verneed*>(b.data() + off);
            size_t aoff = off + vn->vn_aux;
            for (int j = 0; j < vn->vn_cnt; j++) {
                auto* va = reinterpret_cast<Elf64_Vernaux*>(b.data() + aoff);
                if (std::strcmp(strtab + va->vna_name, argv[2]) == 0) {
                    va->vna_flags |= VER_FLG_WEAK;
                    std::fseek(f, 0, SEEK_SET);
                    std::fwrite(b.data(), 1, b.size(), f);
                    std::fclose(f);
                    std::printf("%s: %s marked weak\n", argv[1], argv[2]);
                    return 0;
                }
                if (!va->vna_next) break;
                aoff += va->vna_next;
            }
            if (!vn->vn_next) break;
            off += vn->vn_next;
        }
    }
    std::fclose(f);
    std::printf("%s: no requirement named %s (nothing to do)\n", argv[1], argv[2]);
    return 0;
}
