#include <stdio.h>
#include "ring.h"

#define RING_SIZE 64
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* A ring buffer. */
typedef struct ring {
    int data[RING_SIZE];
    int head;
} ring_t;

struct point { int x, y; };

enum state { EMPTY, FULL };

static int count = 0;

int ring_push(ring_t *r, int value);

/* Push a value. */
int ring_push(ring_t *r, int value) {
    r->data[r->head++] = value;
    return 0;
}

static int *ring_data(ring_t *r) {
    return r->data;
}
