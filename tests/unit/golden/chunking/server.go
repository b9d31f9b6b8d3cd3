package server

import (
	"fmt"
	st "example.com/app/internal/store"
	"example.com/lib/v2"
)

// Server serves requests.
type Server struct {
	Addr  string
	store *st.Store
}

type (
	Handler func(req string) error
	Alias   = string
)

// Start listens on port.
func (s *Server) Start(port int) error {
	fmt.Println(port)
	return nil
}

func New(addr string) *Server {
	return &Server{Addr: addr}
}

const DefaultPort = 8080

var (
	started = false
	count   int
)
