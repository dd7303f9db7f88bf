/* Loads libplug42.so from its own directory by a name computed at run time, so that
 * nothing in its ELF headers names the library: only a trace can find it. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) {
        perror("readlink /proc/self/exe");
        return 10;
    }
    self[n] = '\0';
    *strrchr(self, '/') = '\0';
    char stem[] = {'p', 'l', 'u', 'g', '\0'};
    char name[4200];
    snprintf(name, sizeof name, "%s/lib%s%d.so", self, stem, 6 * 7);
    void *plugin = dlopen(name, RTLD_NOW);
    if (!plugin) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 11;
    }
    int (*answer)(void) = (int (*)(void))dlsym(plugin, "answer");
    if (!answer) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        return 12;
    }
    printf("plugin %s answered %d\n", name, answer());
    return answer() == 42 ? 0 : 13;
}
