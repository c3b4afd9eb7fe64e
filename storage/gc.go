package storage

import (
	"sort"
	"time"
)

// SelectGarbage returns the artifacts the policy removes at time now. It is
// pure so the leader can choose victims once and carry them in a
// replicated command; every replica then deletes the same set.
func SelectGarbage(all []Artifact, p GCPolicy, now time.Time) []Artifact {
	byObject := map[string][]Artifact{}
	for _, a := range all {
		if p.Current != nil && a.Object() != p.Current.Object() {
			continue
		}
		byObject[a.Object()] = append(byObject[a.Object()], a)
	}
	objects := make([]string, 0, len(byObject))
	for o := range byObject {
		objects = append(objects, o)
	}
	sort.Strings(objects)

	var victims []Artifact
	for _, o := range objects {
		victims = append(victims, selectObjectGarbage(byObject[o], p, now)...)
	}
	return victims
}

func selectObjectGarbage(arts []Artifact, p GCPolicy, now time.Time) []Artifact {
	// Newest first; ties broken by path so the order is total.
	sort.Slice(arts, func(i, j int) bool {
		if !arts[i].LastUpdateTime.Equal(arts[j].LastUpdateTime) {
			return arts[i].LastUpdateTime.After(arts[j].LastUpdateTime)
		}
		return arts[i].Path() > arts[j].Path()
	})
	current := arts[0].Path()
	if p.Current != nil {
		current = p.Current.Path()
	}
	// The current artifact always takes one of the Records slots.
	slots := p.Records - 1
	var victims []Artifact
	for _, a := range arts {
		if a.Path() == current {
			continue
		}
		if now.Sub(a.LastUpdateTime) > p.TTL || slots <= 0 {
			victims = append(victims, a)
			continue
		}
		slots--
	}
	return victims
}
