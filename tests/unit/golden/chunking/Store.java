package com.example.store;

import java.util.List;
import java.util.concurrent.*;
import static com.example.util.Strings.join;

/** An in-memory store. */
@Component
public class Store<T> extends Base implements Closeable {
    private static final int MAX = 3, MIN = 1;

    public Store() {}

    @Override
    public int size(List<T> items) {
        return items.size();
    }

    static class Entry {
        void touch() {}
    }
}

interface Listener { void onChange(String key); }

enum Mode { READ, WRITE; boolean writable() { return this == WRITE; } }

record Pair(String key, int value) {}
