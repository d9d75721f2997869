/* A Modbus TCP server on libmodbus (not pymodbus), for tests: a second implementation.
 *
 *   libmodbus_server HOST SIZE [START:END ...]
 *
 * Listens on HOST (e.g. ::1) at a free port and prints "port N" once it accepts. Holding
 * and input registers 0..SIZE-1 hold 1000 + address. A read touching a hole START..END-1
 * (end excluded) answers exception 2 (illegal data address), as meters with unmapped
 * registers do; a read past SIZE answers exception 2 from libmodbus itself. Like
 * libmodbus's TCP servers in general, it answers every unit id the same way.
 * Built by the test fixture: gcc libmodbus_server.c $(pkg-config --cflags --libs libmodbus)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <modbus.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_HOLES 64

static int hole_lo[MAX_HOLES], hole_hi[MAX_HOLES], holes;

static int in_hole(int address, int count) {
    for (int i = 0; i < holes; i++)
        if (address < hole_hi[i] && address + count > hole_lo[i]) return 1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s HOST SIZE [START:END ...]\n", argv[0]);
        return 2;
    }
    int size = atoi(argv[2]);
    for (int i = 3; i < argc && holes < MAX_HOLES; i++, holes++)
        if (sscanf(argv[i], "%d:%d", &hole_lo[holes], &hole_hi[holes]) != 2) {
            fprintf(stderr, "bad hole %s\n", argv[i]);
            return 2;
        }
    modbus_t *ctx = modbus_new_tcp_pi(argv[1], "0");
    modbus_mapping_t *map = modbus_mapping_new(0, 0, size, size);
    if (ctx == NULL || map == NULL) {
        fprintf(stderr, "cannot set up: %s\n", modbus_strerror(errno));
        return 1;
    }
    for (int a = 0; a < size; a++) {
        map->tab_registers[a] = (uint16_t)(1000 + a);
        map->tab_input_registers[a] = (uint16_t)(1000 + a);
    }
    int server = modbus_tcp_pi_listen(ctx, 16);
    if (server < 0) {
        fprintf(stderr, "cannot listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    getsockname(server, (struct sockaddr *)&addr, &len);
    int port = addr.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&addr)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&addr)->sin_port);
    printf("port %d\n", port);
    fflush(stdout);

    fd_set all;
    FD_ZERO(&all);
    FD_SET(server, &all);
    int top = server;
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    for (;;) {
        fd_set ready = all;
        if (select(top + 1, &ready, NULL, NULL, NULL) < 0) {
            if (errno == EINTR) continue;
            perror("select");
            return 1;
        }
        for (int fd = 0; fd <= top; fd++) {
            if (!FD_ISSET(fd, &ready)) continue;
            if (fd == server) {
                int client = accept(server, NULL, NULL);
                if (client >= 0) {
                    FD_SET(client, &all);
                    if (client > top) top = client;
                }
                continue;
            }
            modbus_set_socket(ctx, fd);
            int rc = modbus_receive(ctx, query);
            if (rc <= 0) {
                if (rc < 0) {
                    close(fd);
                    FD_CLR(fd, &all);
                }
                continue;
            }
            int h = modbus_get_header_length(ctx);
            int function = query[h];
            int address = (query[h + 1] << 8) | query[h + 2];
            int count = (query[h + 3] << 8) | query[h + 4];
            if ((function == 3 || function == 4) && in_hole(address, count))
                modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS);
            else
                modbus_reply(ctx, query, rc, map);
        }
    }
}
