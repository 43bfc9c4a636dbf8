package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Names and ports belong to the identity that published them (its token
// or client certificate, see quictun.Service.Owner), not to its
// connection: while the owner is offline they stay reserved for it for a
// grace period, also across a restart of coordinator when a state file
// is kept.

// DefaultNameGrace is Config.NameGrace's default.
const DefaultNameGrace = 10 * time.Minute

// stateSaveEvery bounds how often the state file is written: changes in
// between are written together.
const stateSaveEvery = time.Second

// hold is a name or port held by an owner: online (Left zero) or offline
// since Left.
type hold struct {
	Owner string    `json:"owner"`          // ownerKey of the identity
	Name  string    `json:"name,omitempty"` // the service's name (for a port)
	Left  time.Time `json:"left,omitzero"`  // when the owner went offline; zero while it is online
}

// ownerKey is what the registry keeps of an owner: a SHA-256 of its
// identity, so the state file holds no token (nor a token's short hash).
func ownerKey(owner string) string {
	h := sha256.Sum256([]byte(owner))
	return hex.EncodeToString(h[:])
}

// reservedFor reports whether h keeps its name or port from owner (an
// ownerKey) at now: it is another owner's, online or offline within
// grace.
func (h *hold) reservedFor(owner string, now time.Time, grace time.Duration) bool {
	return h != nil && h.Owner != owner && (h.Left.IsZero() || now.Sub(h.Left) < grace)
}

// offline reports whether h's owner is offline and the name still kept
// for it at now.
func (h *hold) offline(now time.Time, grace time.Duration) bool {
	return h != nil && !h.Left.IsZero() && now.Sub(h.Left) < grace
}

// stateFile is the JSON file where the holds survive a restart.
type stateFile struct {
	Version int             `json:"version"`
	Names   map[string]hold `json:"names,omitempty"`
	Ports   map[uint16]hold `json:"ports,omitempty"`
}

// stateVersion is the state file's format version.
const stateVersion = 1

// readState reads the holds kept in path. Holds whose owner was online
// when coordinator stopped start their grace period at now; those whose
// grace is over are dropped. A missing file is an empty state.
func readState(path string, now time.Time, grace time.Duration) (names map[string]*hold, ports map[uint16]*hold, err error) {
	names, ports = map[string]*hold{}, map[uint16]*hold{}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return names, ports, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("state file: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, nil, fmt.Errorf("state file %s: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, nil, fmt.Errorf("state file %s: version %d, want %d", path, st.Version, stateVersion)
	}
	keep := func(h hold) (*hold, bool) {
		if h.Left.IsZero() {
			h.Left = now
		}
		return &h, h.Owner != "" && now.Sub(h.Left) < grace
	}
	for n, h := range st.Names {
		if p, ok := keep(h); ok {
			names[n] = p
		}
	}
	for port, h := range st.Ports {
		if p, ok := keep(h); ok && port != 0 {
			ports[port] = p
		}
	}
	return names, ports, nil
}

// writeState writes st to path atomically: a temporary file in the same
// directory, renamed over path.
func writeState(path string, st stateFile) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// snapshotLocked copies the holds for the state file; r.mu is held.
func (r *registry) snapshotLocked() stateFile {
	st := stateFile{Version: stateVersion, Names: map[string]hold{}, Ports: map[uint16]hold{}}
	for n, h := range r.holds {
		st.Names[n] = *h
	}
	for p, h := range r.portHolds {
		st.Ports[p] = *h
	}
	return st
}

// changed notes that the holds changed and drops those whose grace is
// over; r.mu is held.
func (r *registry) changedLocked(now time.Time) {
	for n, h := range r.holds {
		if !h.Left.IsZero() && now.Sub(h.Left) >= r.grace {
			delete(r.holds, n)
		}
	}
	for p, h := range r.portHolds {
		if !h.Left.IsZero() && now.Sub(h.Left) >= r.grace {
			delete(r.portHolds, p)
		}
	}
	if r.statePath == "" {
		return
	}
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// saveState writes the state file whenever the holds change, at most
// once per stateSaveEvery, until ctx ends; then once more.
func (r *registry) saveState(ctx context.Context) {
	save := func() {
		r.mu.Lock()
		st := r.snapshotLocked()
		r.mu.Unlock()
		if err := writeState(r.statePath, st); err != nil {
			r.log.Warn("could not save the names clients hold", "err", err)
		}
	}
	defer save()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dirty:
		}
		save()
		select {
		case <-ctx.Done():
			return
		case <-time.After(stateSaveEvery):
		}
	}
}

// loadState takes the holds kept in the state file, if any, and starts
// saving them.
func (r *registry) loadState() error {
	if r.statePath == "" {
		return nil
	}
	names, ports, err := readState(r.statePath, time.Now(), r.grace)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.holds, r.portHolds = names, ports
	st := r.snapshotLocked()
	r.mu.Unlock()
	if err := writeState(r.statePath, st); err != nil { // fail now if it cannot be written
		return err
	}
	if len(names)+len(ports) > 0 {
		r.log.Info("names and ports kept for their clients while offline", "state_file", r.statePath,
			"names", len(names), "ports", len(ports), "name_grace", r.grace)
	}
	r.wg.Go(func() { r.saveState(r.ctx) })
	return nil
}
