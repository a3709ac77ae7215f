module confsync.test/gotmpl

go 1.19
