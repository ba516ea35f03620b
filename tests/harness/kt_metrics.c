/* kt_metrics.c - a worker's /metrics read by the C tests (see kt_metrics.h). */
#include "kt_metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

long long kt_scrape(int port, const char *metric, const char *label)
{
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        static char buf[1 << 20];
        size_t have = 0, mlen = strlen(metric);
        const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
        long long sum = 0;
        ssize_t n;
        char *line, *save = NULL;
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        if (fd < 0)
                return -1;
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
            write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
                close(fd);
                return -1;
        }
        while (have < sizeof(buf) - 1 && (n = read(fd, buf + have, sizeof(buf) - 1 - have)) > 0)
                have += (size_t)n;
        close(fd);
        buf[have] = '\0';
        if (strncmp(buf, "HTTP/1.", 7) || strncmp(buf + 8, " 200", 4))
                return -1;
        for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                const char *sp;
                if (strncmp(line, metric, mlen) || (line[mlen] != '{' && line[mlen] != ' '))
                        continue;
                sp = strrchr(line, ' ');
                if (sp && (!label || strstr(line, label)))
                        sum += atoll(sp + 1);
        }
        return sum;
}
