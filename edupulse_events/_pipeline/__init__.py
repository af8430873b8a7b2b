"""The caller's side of publishing: routing an encoded envelope to its subject and headers
(CloudEvents headers too, where configured) and the bounded queue it waits in for the
publisher thread."""
