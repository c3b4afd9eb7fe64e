package fsm

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/sourceraft/sourceraft/storage"
	bolt "go.etcd.io/bbolt"
)

// An object's alias (storage.AliasFile) serves its current artifact: the
// one its newest commit stored, as Flux's symlink points at the artifact
// it stored last. The current bucket records it on apply, in the commit's
// own transaction, so the alias moves atomically with the artifact and is
// dropped with it: it never names a removed artifact.

// objectOf is the object prefix (kind/namespace/name/) of an artifact path.
func objectOf(path []byte) []byte {
	return path[:bytes.LastIndexByte(path, '/')+1]
}

func setCurrent(tx *bolt.Tx, path []byte) {
	must(tx.Bucket(bucketCurrent).Put(objectOf(path), path))
}

// dropCurrent forgets path as its object's current artifact. The alias then
// answers 404 rather than falling back to an older artifact: garbage
// collection never removes the current one, so only an explicit delete of
// it, or of the whole object, gets here.
func dropCurrent(tx *bolt.Tx, path []byte) {
	current := tx.Bucket(bucketCurrent)
	if obj := objectOf(path); bytes.Equal(current.Get(obj), path) {
		must(current.Delete(obj))
	}
}

// resolve returns the stored path k names: its object's current artifact
// for an alias, k itself otherwise; nil when the object has none.
func resolve(tx *bolt.Tx, k storage.Key) []byte {
	id := k.Identity()
	if !id.IsAlias() {
		return []byte(k.String())
	}
	return tx.Bucket(bucketCurrent).Get([]byte(id.Object()))
}

// ensureCurrent creates the current bucket in a file written before it
// existed (a layout 2 store, or a snapshot of one) and fills it with each
// object's newest artifact by LastUpdateTime, then path: every replica
// holds the same artifacts and so makes the same choice.
func ensureCurrent(tx *bolt.Tx) error {
	if tx.Bucket(bucketCurrent) != nil {
		return nil
	}
	current, err := tx.CreateBucket(bucketCurrent)
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketCurrent, err)
	}
	newest := map[string]storage.Artifact{}
	err = tx.Bucket(bucketArtifacts).ForEach(func(k, v []byte) error {
		var a storage.Artifact
		if err := decodeArtifact(string(k), v, &a); err != nil {
			return err
		}
		obj := string(objectOf(k))
		if n, ok := newest[obj]; !ok || a.LastUpdateTime.After(n.LastUpdateTime) ||
			a.LastUpdateTime.Equal(n.LastUpdateTime) && strings.Compare(string(k), n.Path()) > 0 {
			newest[obj] = a
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("fill bucket %s: %w", bucketCurrent, err)
	}
	for obj, a := range newest {
		if err := current.Put([]byte(obj), []byte(a.Path())); err != nil {
			return fmt.Errorf("fill bucket %s: %w", bucketCurrent, err)
		}
	}
	return nil
}
