/* A DTLS 1.2 PSK client on wolfSSL, for tests/test_interop_wolfssl.py.
 *
 *   wolfssl_client HOST PORT IDENTITY KEY_HEX MESSAGE COUNT [CIPHERS]
 *
 * It connects with wolfSSL's default offer (every suite of the library's build that PSK can use,
 * and its default supported groups), or with CIPHERS (a wolfSSL cipher list) when given; sends
 * MESSAGE COUNT times, reading one reply after each; then sends close_notify.  What it prints,
 * one fact a line:
 *
 *   connected cipher=<wolfSSL's suite name> group=<curve name, or none>
 *   reply: <the reply's text>
 *   error: <what failed>: <wolfSSL's error code> <wolfSSL's error string>[; alert <number> received]
 *
 * Exit status: 0 every reply came back; 2 bad arguments; 3 setup failed (socket, context);
 * 4 the handshake failed; 5 a write failed; 6 a read failed (or timed out).  The whole run is
 * bounded by an alarm (RUN_LIMIT seconds), whatever the network does.
 */

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { EXIT_USAGE = 2, EXIT_SETUP = 3, EXIT_HANDSHAKE = 4, EXIT_WRITE = 5, EXIT_READ = 6 };

/* Seconds the client may live; the test's own limit is longer. */
#define RUN_LIMIT 20
#define STRING(x) #x
#define EXPANDED_STRING(x) STRING(x)

static const char *psk_identity;
static unsigned char psk_key[64];
static unsigned int psk_key_length;

static unsigned int client_psk(WOLFSSL *ssl, const char *hint, char *identity,
                               unsigned int identity_size, unsigned char *key,
                               unsigned int key_size)
{
    (void)ssl;
    (void)hint;
    if (strlen(psk_identity) + 1 > identity_size || psk_key_length > key_size)
        return 0;
    strcpy(identity, psk_identity);
    memcpy(key, psk_key, psk_key_length);
    return psk_key_length;
}

static int parse_hex(const char *text, unsigned char *out, unsigned int capacity,
                     unsigned int *length)
{
    size_t digits = strlen(text);
    if (digits == 0 || digits % 2 != 0 || digits / 2 > capacity)
        return 0;
    for (size_t i = 0; i < digits / 2; i++) {
        unsigned int byte;
        if (sscanf(text + 2 * i, "%2x", &byte) != 1)
            return 0;
        out[i] = (unsigned char)byte;
    }
    *length = (unsigned int)(digits / 2);
    return 1;
}

static void on_alarm(int signal_number)
{
    static const char message[] = "error: timeout: no end after " EXPANDED_STRING(RUN_LIMIT) " seconds\n";
    (void)signal_number;
    /* Only async-signal-safe calls here. */
    if (write(STDOUT_FILENO, message, sizeof message - 1) < 0) {
    }
    _exit(EXIT_READ);
}

static int fail(WOLFSSL *ssl, int result, const char *what, int status)
{
    char text[WOLFSSL_MAX_ERROR_SZ];
    int code = wolfSSL_get_error(ssl, result);
    WOLFSSL_ALERT_HISTORY alerts;
    wolfSSL_ERR_error_string_n((unsigned long)code, text, sizeof text);
    printf("error: %s: %d %s", what, code, text);
    /* The fatal alert the peer sent, if one ended it: the test checks its number. */
    if (wolfSSL_get_alert_history(ssl, &alerts) == WOLFSSL_SUCCESS && alerts.last_rx.level == 2)
        printf("; alert %d received", alerts.last_rx.code);
    printf("\n");
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 8) {
        fprintf(stderr, "usage: %s HOST PORT IDENTITY KEY_HEX MESSAGE COUNT [CIPHERS]\n", argv[0]);
        return EXIT_USAGE;
    }
    const char *host = argv[1], *port = argv[2], *message = argv[5];
    int count = atoi(argv[6]);
    psk_identity = argv[3];
    if (!parse_hex(argv[4], psk_key, sizeof psk_key, &psk_key_length) || count < 1) {
        fprintf(stderr, "error: bad key or count\n");
        return EXIT_USAGE;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    alarm(RUN_LIMIT);

    struct addrinfo hints = {0}, *address;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &address) != 0) {
        printf("error: setup: cannot parse %s port %s\n", host, port);
        return EXIT_SETUP;
    }
    int fd = socket(address->ai_family, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, address->ai_addr, address->ai_addrlen) != 0) {
        printf("error: setup: no UDP socket to %s port %s\n", host, port);
        return EXIT_SETUP;
    }

    wolfSSL_Init();
    WOLFSSL_CTX *context = wolfSSL_CTX_new(wolfDTLSv1_2_client_method());
    if (context == NULL) {
        printf("error: setup: wolfSSL_CTX_new failed\n");
        return EXIT_SETUP;
    }
    wolfSSL_CTX_set_verify(context, WOLFSSL_VERIFY_NONE, NULL);
    wolfSSL_CTX_set_psk_client_callback(context, client_psk);
    if (argc == 8 && wolfSSL_CTX_set_cipher_list(context, argv[7]) != WOLFSSL_SUCCESS) {
        printf("error: setup: wolfSSL does not accept the cipher list %s\n", argv[7]);
        return EXIT_SETUP;
    }
    WOLFSSL *ssl = wolfSSL_new(context);
    if (ssl == NULL || wolfSSL_dtls_set_peer(ssl, address->ai_addr,
                                             (unsigned int)address->ai_addrlen) != WOLFSSL_SUCCESS
        || wolfSSL_set_fd(ssl, fd) != WOLFSSL_SUCCESS) {
        printf("error: setup: wolfSSL_new/dtls_set_peer/set_fd failed\n");
        return EXIT_SETUP;
    }
    freeaddrinfo(address);

    int result = wolfSSL_connect(ssl);
    if (result != WOLFSSL_SUCCESS)
        return fail(ssl, result, "handshake", EXIT_HANDSHAKE);
    const char *group = wolfSSL_get_curve_name(ssl);
    printf("connected cipher=%s group=%s\n", wolfSSL_get_cipher_name(ssl),
           group != NULL ? group : "none");

    for (int i = 0; i < count; i++) {
        result = wolfSSL_write(ssl, message, (int)strlen(message));
        if (result <= 0)
            return fail(ssl, result, "write", EXIT_WRITE);
        char reply[2048];
        result = wolfSSL_read(ssl, reply, sizeof reply - 1);
        if (result <= 0)
            return fail(ssl, result, "read", EXIT_READ);
        reply[result] = '\0';
        printf("reply: %s\n", reply);
    }
    wolfSSL_shutdown(ssl); /* close_notify; no answer awaited */
    wolfSSL_free(ssl);
    wolfSSL_CTX_free(context);
    wolfSSL_Cleanup();
    close(fd);
    return 0;
}
