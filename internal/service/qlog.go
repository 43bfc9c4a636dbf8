package service

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// QlogDirFlag is --qlog-dir, for the services that speak QUIC.
func QlogDirFlag(envPrefix string) cli.Flag {
	return altsrc.NewStringFlag(&cli.StringFlag{Name: "qlog-dir", EnvVars: []string{envPrefix + "QLOG_DIR"}, TakesFile: true,
		Usage: "write a qlog trace of every QUIC connection into this directory (for debugging, e.g. with qvis: packet metadata, no payload; the files grow with traffic)"})
}

// QlogDir makes the directory --qlog-dir names, if it is set, and returns
// its absolute path ("" when unset).
func QlogDir(c *cli.Context, log *slog.Logger) (string, error) {
	dir := c.String("qlog-dir")
	if dir == "" {
		return "", nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", &UsageError{Err: fmt.Errorf("--qlog-dir: %w", err)}
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", &UsageError{Err: fmt.Errorf("--qlog-dir: %w", err)}
	}
	log.Warn("--qlog-dir: writing a qlog trace of every QUIC connection (debugging only: the files grow with traffic)", "dir", abs)
	return abs, nil
}
