package main

import (
	"errors"
	"fmt"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// plotLatencies draws the eviction scenarios' latency distributions (as CDFs: the fraction
// of revoked conns closed by each moment after the publish) side by side into a PNG.
func plotLatencies(file string, r *Results) error {
	var panels []*plot.Plot
	type series struct {
		name    string
		samples []float64
	}
	add := func(title string, ss []series) error {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "ms after the publish to Redis"
		p.Y.Label.Text = "fraction of revoked conns closed"
		p.Y.Min, p.Y.Max = 0, 1
		p.Legend.Top = false
		p.Legend.Left = false
		p.Add(plotter.NewGrid())
		for i, s := range ss {
			if len(s.samples) == 0 {
				continue
			}
			pts := make(plotter.XYs, len(s.samples))
			for j, v := range s.samples { // samples are sorted
				pts[j].X, pts[j].Y = v, float64(j+1)/float64(len(s.samples))
			}
			line, err := plotter.NewLine(pts)
			if err != nil {
				return err
			}
			line.Color = plotutil.Color(i)
			line.Width = vg.Points(1.5)
			p.Add(line)
			p.Legend.Add(s.name, line)
		}
		panels = append(panels, p)
		return nil
	}
	if s := r.EvictionSingle; s != nil || r.Fleet != nil {
		var ss []series
		title := "one conn per publish"
		if s != nil {
			ss = append(ss, series{fmt.Sprintf("eviction-single (%d)", s.Rounds), s.Samples})
		}
		if f := r.Fleet; f != nil {
			for i, n := range f.PerNode {
				ss = append(ss, series{fmt.Sprintf("fleet node %d (%d)", i+1, f.Rounds), n.Samples})
			}
		}
		if err := add(title, ss); err != nil {
			return err
		}
	}
	if b := r.EvictionBulk; b != nil {
		if err := add(fmt.Sprintf("eviction-bulk: %d certs, %d conns", b.Certs, b.Revoked),
			[]series{{fmt.Sprintf("closed %d of %d", b.Closed, b.Revoked), b.Samples}}); err != nil {
			return err
		}
	}
	if b := r.EvictionCA; b != nil {
		if err := add(fmt.Sprintf("eviction-ca: one intermediate, %d conns", b.Revoked),
			[]series{{fmt.Sprintf("closed %d of %d", b.Closed, b.Revoked), b.Samples}}); err != nil {
			return err
		}
	}
	if len(panels) == 0 {
		return errors.New("no eviction scenario ran: nothing to plot")
	}
	const w, h = 480, 400
	img := vgimg.New(vg.Points(w*float64(len(panels))), vg.Points(h))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: vg.Points(12), PadY: vg.Points(12),
		PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(6)}
	canvases := plot.Align([][]*plot.Plot{panels}, tiles, dc)
	for i, p := range panels {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
