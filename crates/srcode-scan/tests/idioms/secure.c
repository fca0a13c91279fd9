#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <fcntl.h>

int read_config(const char *path, char *out, size_t cap) {
    FILE *fp;
    if ((fp = fopen(path, "r")) == NULL)
        return -1;
    if (fgets(out, (int)cap, fp) == NULL) {
        fclose(fp);
        return -1;
    }
    out[strcspn(out, "\n")] = '\0';
    fclose(fp);
    return 0;
}

int copy_name(char *dst, size_t dst_size, const char *src) {
    size_t len = strlen(src);
    if (len >= dst_size)
        return -1;
    memcpy(dst, src, len + 1);
    return 0;
}

void greet(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "Hello, %s!", name);
}

int get_item(const int *arr, size_t n, long idx) {
    if (idx < 0 || (size_t)idx >= n)
        return -1;
    return arr[idx];
}

int *make_array(size_t n) {
    if (n == 0 || n > SIZE_MAX / sizeof(int))
        return NULL;
    int *a = malloc(n * sizeof(int));
    if (!a)
        return NULL;
    memset(a, 0, n * sizeof(int));
    return a;
}

char *grow(char *buf, size_t *cap) {
    size_t ncap = *cap * 2;
    char *p = realloc(buf, ncap);
    if (p == NULL) {
        free(buf);
        return NULL;
    }
    *cap = ncap;
    return p;
}

void release(char **pp) {
    free(*pp);
    *pp = NULL;
}

int run_ls(const char *dir) {
    char *const argv[] = {"ls", "-l", (char *)dir, NULL};
    return execvp("ls", argv);
}

char *dup_or_null(const char *s) {
    char *d = strdup(s);
    if (d == NULL)
        return NULL;
    d[0] = (char)toupper((unsigned char)d[0]);
    return d;
}

int sum(const int *v, size_t n) {
    int s = 0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    return s;
}

void log_count(int n) {
    printf("count=%d\n", n);
    fprintf(stderr, "%s\n", "done");
}

int parse_port(const char *s) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < 1 || v > 65535)
        return -1;
    return (int)v;
}

struct node { struct node *next; int v; };
void free_list(struct node *head) {
    while (head) {
        struct node *next = head->next;
        free(head);
        head = next;
    }
}

void a(void) { int x; char name[100]; if (scanf("%d", &x) != 1) return; if (scanf("%99s", name) != 1) return; }
void b(void) { system("clear"); }
int c(int n) { return rand() % n; }
void d(char *buf, size_t n, const char *s) { char *p = (char *)malloc(n + 1); if (!p) return; strncpy(p, s, n); p[n] = 0; free(p); p = NULL; }
void e(const char *s) { char buf[64]; if (strlen(s) >= sizeof(buf)) return; strcpy(buf, s); puts(buf); }
int f(int *a, int n, int i) { if (i >= 0 && i < n) return a[i]; return 0; }
void g(unsigned char *out, const unsigned char *in, size_t len, size_t cap) { if (len > cap) len = cap; memcpy(out, in, len); }

int open_in(const char *dir, const char *name) {
    char path[256];
    if (strstr(name, "..") != NULL || strchr(name, '/') != NULL)
        return -1;
    int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof(path))
        return -1;
    return open(path, O_RDONLY);
}
int vla(size_t n) {
    if (n == 0 || n > 256)
        return -1;
    int tmp[n];
    memset(tmp, 0, sizeof(tmp));
    return tmp[0];
}
int drain(const unsigned char *buf, size_t len) {
    size_t i = 0;
    int s = 0;
    while (i < len) {
        s += buf[i];
        i++;
    }
    return s;
}
void cleanup(char *p) {
    free(p);
    p = NULL;
    if (p)
        puts(p);
}
char *join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *out = malloc(la + lb + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, a, la);
    memcpy(out + la, b, lb + 1);
    return out;
}
void log_wide(long v) {
    printf("v=%" PRId64 "\n", (int64_t)v);
    printk(KERN_INFO "v=%ld\n", v);
}
int next_token(char *s) {
    char *p;
    if ((p = strchr(s, ',')) == NULL)
        return -1;
    *p = '\0';
    return 0;
}
void copy_bounded(char *dst, size_t size, const char *src) {
    if (size == 0)
        return;
    strncpy(dst, src, size - 1);
    dst[size - 1] = '\0';
}
