package quictun

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"
)

// qlogTracer returns a quic.Config Tracer that writes a qlog trace of
// every connection to a file in dir (named as quic-go's QLOGDIR names
// them: <original destination connection id>_<client|server>.sqlog), for
// debugging with tools such as qvis. It returns nil for an empty dir. A
// trace holds packet and frame metadata, never payload; it grows with the
// traffic.
func qlogTracer(dir string, log *slog.Logger) func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace {
	if dir == "" {
		return nil
	}
	return func(_ context.Context, isClient bool, id quic.ConnectionID) qlogwriter.Trace {
		side := "server"
		if isClient {
			side = "client"
		}
		name := filepath.Join(dir, fmt.Sprintf("%s_%s.sqlog", id, side))
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			log.Warn("qlog trace not written", "err", err)
			return nil
		}
		seq := qlogwriter.NewConnectionFileSeq(&bufferedFile{Writer: bufio.NewWriter(f), f: f}, isClient, id)
		go seq.Run() // ends when quic-go closes the trace, with the connection
		return seq
	}
}

// bufferedFile is a file written through a buffer, flushed on Close.
type bufferedFile struct {
	*bufio.Writer
	f *os.File
}

func (b *bufferedFile) Close() error { return errors.Join(b.Flush(), b.f.Close()) }
