"""A memory of uploads that survives the state database: an extended attribute on each kept source.

After Studio confirmed a file that stays where it is (`after_upload: keep`), the daemon records
`user.studio_watch.media` on it: the media id, the target, and the size and mtime it had. A new database (a
lost volume, `run --new-database`) would otherwise take every kept file for a new one; a file that still
carries a matching mark is skipped instead. Setting the attribute changes the file's ctime only, never its
mtime or contents.

It needs a filesystem with user extended attributes (ext4, xfs, btrfs, tmpfs; not every NFS or SMB share) and
write permission on the file (not its ownership: an ACL granting the daemon rw is enough). Where it cannot be
written the upload is unaffected, and that file is not protected against a lost database (docs/operations.md).
"""

from __future__ import annotations

import errno
import json
import os

from studio_watch.logs import get_logger

log = get_logger(__name__)

XATTR = "user.studio_watch.media"
_CANNOT = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSPC, errno.EDQUOT,
           errno.ENOENT, errno.E2BIG)


def record(path: str, media_id: int, size: int | None, mtime_ns: int | None, inode: int | None,
           collection_id: int | None, user_id: int | None) -> bool:
    """Mark `path` as uploaded as `media_id`; False (logged) where the filesystem or permissions do not allow it."""
    value = json.dumps({"media_id": media_id, "size": size, "mtime_ns": mtime_ns, "inode": inode,
                        "collection_id": collection_id, "user_id": user_id}, separators=(",", ":")).encode()
    try:
        os.setxattr(path, XATTR, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _CANNOT:
            raise
        log.info("upload_mark_skipped", path=os.fsencode(path).decode("utf-8", "backslashreplace"),
                 reason=exc.strerror, note="this kept file is not protected against a lost state database")
        return False
    return True


def uploaded_as(path: str, st: os.stat_result, collection_id: int | None, user_id: int | None,
                same_inode_only: bool = False) -> int | None:
    """The media id this very file (same size and mtime, same target) was uploaded as, by its mark; else None.
    `same_inode_only`: a copy carrying the mark does not count (a folder that uploads duplicates)."""
    try:
        mark = json.loads(os.getxattr(path, XATTR, follow_symlinks=False))
    except (OSError, ValueError):
        return None
    if not isinstance(mark, dict) or not isinstance(mark.get("media_id"), int):
        return None
    if (mark.get("size"), mark.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return None  # changed since: a new recording under the old name
    if (mark.get("collection_id"), mark.get("user_id")) != (collection_id, user_id):
        return None
    if same_inode_only and mark.get("inode") != st.st_ino:
        return None
    return int(mark["media_id"])
