package clusterapi

import "net/url"

// Route paths of the internal API. Every route needs the bearer token.
const (
	// ClusterPath answers GET with this replica's Status.
	ClusterPath = "/v1/cluster"
	// ContentHashPath answers GET with this replica's ContentHash.
	ContentHashPath = "/v1/content-hash"
	// ArtifactsPrefix, followed by <kind>/<namespace>/<name>/<file>,
	// takes PUT (answered with a PutResult) and DELETE.
	ArtifactsPrefix = "/v1/artifacts/"
	// NodesPrefix, followed by a node id, takes PUT with a Peer (a
	// replica registering its addresses) and DELETE (removing it).
	NodesPrefix = "/v1/nodes/"
)

// Headers of an artifact PUT.
const (
	// RevisionHeader is the source revision the artifact records.
	RevisionHeader = "X-Artifact-Revision"
	// DigestHeader, when set, is the digest the content must hash to;
	// the upload is refused otherwise.
	DigestHeader = "X-Artifact-Digest"
)

// URL is the address of the escaped path on the internal API at addr
// (host:port). The API is plain HTTP: the bearer token is its protection,
// the NetworkPolicy its fence.
func URL(addr, path string) string {
	return "http://" + addr + path
}

// Authorization is the Authorization header value carrying token.
func Authorization(token string) string {
	return "Bearer " + token
}

// ArtifactPath is the escaped request path of the artifact at p, a
// <kind>/<namespace>/<name>/<file> path whose slashes separate segments.
func ArtifactPath(p string) string {
	return (&url.URL{Path: ArtifactsPrefix + p}).EscapedPath()
}

// NodePath is the escaped request path of the node id; a slash in the id
// is escaped, so the id stays one segment.
func NodePath(id string) string {
	return NodesPrefix + url.PathEscape(id)
}
