package service

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer records writes; each Write is one batch.
type lockedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	batches int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.batches++
	return l.buf.Write(p)
}

func TestBatchWriterKeepsEveryLineInOrder(t *testing.T) {
	for _, tc := range []struct {
		name           string
		writers, lines int
		lineSize       int
	}{
		{"one writer", 1, 1000, 40},
		{"many writers", 16, 500, 40},
		{"lines larger than a batch", 4, 20, maxBatch + 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out lockedBuffer
			b := newBatchWriter(&out)
			var wg sync.WaitGroup
			for w := range tc.writers {
				wg.Go(func() {
					for i := range tc.lines {
						line := fmt.Sprintf("w%d %d ", w, i)
						line += strings.Repeat("x", max(tc.lineSize-len(line)-1, 0)) + "\n"
						if n, err := b.Write([]byte(line)); n != len(line) || err != nil {
							t.Errorf("Write = %d, %v; want %d, nil", n, err, len(line))
						}
					}
				})
			}
			wg.Wait()
			b.Close()
			next := make([]int, tc.writers)
			lines := strings.Split(strings.TrimSuffix(out.buf.String(), "\n"), "\n")
			if len(lines) != tc.writers*tc.lines {
				t.Fatalf("got %d lines, want %d", len(lines), tc.writers*tc.lines)
			}
			for _, l := range lines {
				var w, i int
				if _, err := fmt.Sscanf(l, "w%d %d ", &w, &i); err != nil {
					t.Fatalf("mangled line %.40q: %v", l, err)
				}
				if i != next[w] {
					t.Fatalf("writer %d: line %d after %d", w, i, next[w]-1)
				}
				next[w]++
			}
			t.Logf("%d lines in %d writes", len(lines), out.batches)
		})
	}
}

func TestBatchWriterAfterClose(t *testing.T) {
	var out lockedBuffer
	b := newBatchWriter(&out)
	b.Write([]byte("before\n"))
	b.Close()
	b.Write([]byte("after\n"))
	if got := out.buf.String(); got != "before\nafter\n" {
		t.Fatalf("got %q", got)
	}
}

func TestBatchWriterDoesNotWaitForClose(t *testing.T) {
	var out lockedBuffer
	b := newBatchWriter(&out)
	defer b.Close()
	b.Write([]byte("alone\n"))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		out.mu.Lock()
		got := out.buf.String()
		out.mu.Unlock()
		if got == "alone\n" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a lone line was not written out before Close (got %q)", got)
		}
	}
}
